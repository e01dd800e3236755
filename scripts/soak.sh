#!/usr/bin/env bash
# The soak test (issue 18): 20 Go processes traced by one gotel daemon for 20 minutes, with
# process churn and two collector outages; exits non-zero when the agent's footprint is not
# flat or the span accounting does not close. `scripts/soak.sh --minutes 2` is CI's short mode.
# The logic is scripts/soak.py (--help for every option).
set -euo pipefail
exec python3 -u "$(dirname "$0")/soak.py" "$@"
