package natpmp_test

import (
	"context"
	"log"
	"net/netip"

	"wg-wrap/go-sidecar/natpmp"
)

// The sidecar, inside the profile's network namespace, asks the VPN's
// gateway (ProtonVPN: 10.2.0.1) through the tunnel.
func ExampleMapper() {
	gateway := netip.AddrPortFrom(netip.MustParseAddr("10.2.0.1"), natpmp.GatewayPort)
	client, err := natpmp.Dial(gateway, natpmp.RFCRetry)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	m := natpmp.NewMapper(client, natpmp.Config{
		// Zero values: UDP and TCP, internal port 0, suggested 1, 60 s.
		OnChange: func(st natpmp.Status) {
			log.Printf("listen on %d; peers reach %s:%d", st.Port, st.ExternalAddress, st.ExternalPort)
		},
		OnStatus: func(st natpmp.Status) { /* write it for `wg-wrap status` */ },
		Logf:     log.Printf,
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx) // until the sidecar stops: cancel, then wait for Run to return
	_ = m.Status()
}
