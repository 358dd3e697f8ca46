#!/bin/sh
# Install the third-party clients the interop tests drive (Debian packages). As root this
# installs them; otherwise it only says what is missing (the tests then fail naming the tool).
set -eu
PACKAGES="swaks libnet-ssleay-perl curl msmtp mutt fetchmail getmail6 mpop openssl"
TOOLS="swaks curl msmtp mutt fetchmail getmail mpop openssl"
missing=""
for t in $TOOLS; do command -v "$t" >/dev/null 2>&1 || missing="$missing $t"; done
# swaks needs Net::SSLeay for --tls (a Recommends, not a Depends, of the swaks package).
perl -MNet::SSLeay -e 1 >/dev/null 2>&1 || missing="$missing libnet-ssleay-perl"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing interop clients:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
else
    echo "missing interop clients:$missing"
    echo "  install them with: sudo apt-get install $PACKAGES"
    echo "  (the interop tests fail until they are installed)"
fi
