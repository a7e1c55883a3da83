// Command kvstore is a small key-value service made to be kept highly
// available by concord, and its own resource agent.
//
// One binary has two faces. `kvstore serve --listen ADDR --dir DIR` is
// the service: an HTTP key-value store that serves reads everywhere and
// writes only while it is the primary, keeps its state in DIR/state.json,
// and refuses promotions and states older than the highest fencing token
// it has seen. With a lease (--lease), a primary also stops taking writes
// when concord stops renewing its role, as it does when concord dies. `kvstore ACTION` (start, stop, promote, demote, monitor,
// checkpoint, restore) is the resource agent concord runs per action: it
// starts and stops the daemon and turns each action into a call of the
// daemon's admin API. See README.md for the HTTP API and the contract.
package main

import (
	"fmt"
	"os"
)

// usage is printed when the command line names neither serve nor an
// action.
const usage = `usage:
  kvstore serve --listen ADDR --dir DIR [--service NAME] [--node NAME] [--sync] [--lease DURATION]
  kvstore ACTION    (start, stop, promote, demote, monitor, checkpoint or restore;
                     configured by CONCORD_PARAM_LISTEN, CONCORD_PARAM_DIR and
                     optionally CONCORD_PARAM_SYNC and CONCORD_PARAM_LEASE, as
                     concord's resource agent)
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(exitUnimplemented)
	}
	if os.Args[1] == "serve" {
		os.Exit(serveMain(os.Args[2:]))
	}
	os.Exit(agentMain(os.Args[1], os.Environ(), os.Stdin, os.Stdout, os.Stderr))
}
