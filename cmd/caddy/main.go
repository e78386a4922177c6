// Command caddy is Caddy with the standard modules and break_glass, for
// development and tests. Operators build the same with xcaddy (see README).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddy-break-glass/caddy-break-glass"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}
