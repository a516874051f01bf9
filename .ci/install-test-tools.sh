#!/usr/bin/env bash
# Installs the real tools weir's tests start on 127.0.0.1, on Debian/Ubuntu (run as root, or
# with sudo): .ci/run calls it, and README.md's "Test it" names it.
#   promtool, prometheus       (Debian `prometheus`): checks metrics, rules and the kit's files;
#                              Prometheus scrapes weir and evaluates the shipped alert rules
#   prometheus-alertmanager,   (Debian `prometheus-alertmanager`): the alertmanager notifier and
#   amtool                     the kit's alertmanager.yml
#   openssl                    certificates for the SMTP STARTTLS test
#   chromium                   (Debian `chromium`): a headless browser loads the status page `/`
#   python3, aiosmtpd          the agent-shape and multi-line fixtures; a real SMTP server for the
#                              email notifier (aiosmtpd 1.4.6 from pip, else Debian's python3-aiosmtpd)
# Without them those tests print "SKIPPED: ..." and pass; with CI=true they fail instead.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null \
   || ! command -v amtool >/dev/null || ! command -v openssl >/dev/null \
   || ! command -v python3 >/dev/null || ! command -v chromium >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-alertmanager openssl python3 python3-pip chromium >/dev/null
fi
command -v promtool prometheus prometheus-alertmanager amtool openssl python3 chromium
python3 -c 'import aiosmtpd' 2>/dev/null \
  || python3 -m pip install -q aiosmtpd==1.4.6 \
  || python3 -m pip install -q --break-system-packages aiosmtpd==1.4.6 \
  || $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-aiosmtpd >/dev/null
python3 -c 'import aiosmtpd'
