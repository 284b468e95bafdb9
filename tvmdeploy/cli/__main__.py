import os
import sys

from . import main as cli

code = cli.main()
if cli.exit_without_cleanup:  # a thread is stuck in TVM's RPC: do not wait for it at exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
