#!/bin/sh
# Install the third-party clients the interop tests drive (Debian packages). As root this
# installs them; otherwise it only says what is missing (the tests then fail naming the tool).
# dovecot-core brings doveadm, whose dsync pulls an account over IMAP (imapc) in the IMAP tests.
# knot is the authoritative DNS server the outbound-mail tests start (tests/support/dns.py);
# postfix is the real MX peer and smtp-sink (tests/support/postfix.py), installed with the
# debconf answer "No configuration" so no system instance is set up.
# lftp is an FTP/FTPS client of the file-transfer tests; openssh-client (sftp, ssh-keygen) and
# sshpass (the password login) drive the SFTP tests.
# chrony (chronyd -Q, chronyd + chronyc as a monitoring client, NTS) and ntpsec-ntpdig (ntpdig,
# run on port 123 inside a network namespace, hence iproute2) are the NTP tests' clients (on a
# machine with systemd the chrony package replaces systemd-timesyncd as the OS time service).
# The DHCP tests run real clients in network namespaces (iproute2): isc-dhcp-client (dhclient),
# udhcpc (busybox), dhcpcd-base, dhcping and nmap; bench/dhcp_perf.py needs perfdhcp
# (kea-admin) and Kea itself (kea-dhcp4-server, started by the bench, never as a service);
# bench/dhcp6_perf.py the same with kea-dhcp6-server.
# Also the build dependencies of Dovecot's imaptest, which tests/interop/imaptest_tool.py builds
# from shared/tools/ into ~/.cache/netpost-tools (imaptest itself is not packaged in Debian).
set -eu
CLIENTS="knot postfix swaks libnet-ssleay-perl curl msmtp mutt neomutt isync offlineimap3 fetchmail getmail6 mpop openssl dovecot-core lftp openssh-client sshpass chrony ntpsec-ntpdig iproute2"
DHCP="isc-dhcp-client udhcpc dhcpcd-base dhcping nmap kea-admin kea-dhcp4-server kea-dhcp6-server"
IMAPTEST_BUILD="dovecot-dev build-essential autoconf automake libtool pkg-config libssl-dev zlib1g-dev"
PACKAGES="$CLIENTS $DHCP $IMAPTEST_BUILD"
TOOLS="knotd knotc postfix postconf smtp-sink swaks curl msmtp mutt neomutt mbsync offlineimap fetchmail getmail mpop openssl doveadm lftp sftp ssh-keygen sshpass chronyd chronyc ntpdig ip"
TOOLS="$TOOLS dhclient udhcpc dhcpcd dhcping nmap perfdhcp kea-dhcp4 kea-dhcp6"
# The user agent's PGP interop tests (tests/agent): GnuPG and Sequoia's sq check what netpost
# signs and encrypts and make what it must read; tmux drives the $EDITOR compose flow (vim).
# The agent's Dovecot interop test runs bench/peer-bench/peers/dovecot.sh (IMAP and POP3).
PACKAGES="$PACKAGES gnupg sq tmux vim dovecot-imapd dovecot-pop3d"
TOOLS="$TOOLS gpg sq tmux vim"
# The web UI's browser tests (tests/web/ui, bench/webmail_first_page.py) drive Debian's
# Chromium with Playwright (pip: the 'test' extra); Playwright's own browser download is not
# needed. Without a browser those tests fail and say how to get one.
PACKAGES="$PACKAGES chromium"
TOOLS="$TOOLS chromium"
BUILD_TOOLS="autoreconf automake libtoolize pkg-config make cc"
missing=""
for t in $TOOLS $BUILD_TOOLS; do command -v "$t" >/dev/null 2>&1 || missing="$missing $t"; done
[ -x /usr/lib/dovecot/imap ] || missing="$missing dovecot-imapd"
[ -x /usr/lib/dovecot/pop3 ] || missing="$missing dovecot-pop3d"
# swaks needs Net::SSLeay for --tls (a Recommends, not a Depends, of the swaks package).
perl -MNet::SSLeay -e 1 >/dev/null 2>&1 || missing="$missing libnet-ssleay-perl"
# imaptest is configured with --with-dovecot=/usr/lib/dovecot and compiles against its headers.
[ -f /usr/lib/dovecot/dovecot-config ] && [ -f /usr/include/dovecot/imap-parser.h ] \
    || missing="$missing dovecot-dev"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing interop clients and imaptest build deps:$missing"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
    # The bench starts Kea with its own config; a system Kea must not serve any network.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now kea-dhcp4-server >/dev/null 2>&1 || true
        systemctl disable --now kea-dhcp6-server >/dev/null 2>&1 || true
    fi
else
    echo "missing interop clients / imaptest build deps:$missing"
    echo "  install them with: sudo apt-get install $PACKAGES"
    echo "  (the interop tests fail until they are installed)"
fi
