#!/usr/bin/env bash
# Compute node: slurmd, callerid (from the checkout) with its systemd units, and sshd's
# PAM stack with pam_callerid.so last in account and pam_systemd removed.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
src=/opt/callerid/src
apt-get install -y -q --no-install-recommends slurmd openssh-server python3-bpfcc python3-venv gcc libc6-dev libpam0g-dev \
  linux-headers-amd64 libpam-slurm-adopt

install -d -o slurm -g slurm /var/lib/slurm/slurmd /var/log/slurm
systemctl enable --now slurmd

# callerid: a venv from the system interpreter, so Debian's bcc module imports.
[ -x /opt/callerid/venv/bin/python3 ] || /usr/bin/python3 -m venv --system-site-packages /opt/callerid/venv
/opt/callerid/venv/bin/pip install -q "$src"
bash "$src"/scripts/build_pam.sh /opt/callerid/build
install -m 0644 /opt/callerid/build/pam_callerid.so /lib/x86_64-linux-gnu/security/pam_callerid.so
[ -f /etc/security/access-callerid.conf ] || printf '+:root vagrant:ALL\n-:ALL:ALL\n' > /etc/security/access-callerid.conf
install -d /etc/callerid
[ -f /etc/callerid/callerid.toml ] || cat > /etc/callerid/callerid.toml <<'CONF'
[common]
slurm_user = "slurm"

[tracer]
metrics = "[::]:9828"

[adopter]
metrics = "[::]:9829"
CONF
install -m 0644 "$src"/packaging/systemd/callerid-*.service /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now callerid-tracer callerid-adopter

# sshd: pam_callerid.so last in the account stack (root and vagrant in through pam_access). pam_systemd goes: it would move
# every ssh session into a logind scope, out of the job's cgroups, so Slurm could
# neither account for it nor kill it at job end (the same rule as pam_slurm_adopt).
pam=/etc/pam.d/sshd
grep -q "pam_callerid.so" "$pam" || grep -v '^#' "$src"/packaging/pam/sshd-account-callerid | grep . >> "$pam"
sed -i 's/^\(session.*pam_systemd\.so.*\)$/# removed for callerid: \1/' /etc/pam.d/common-session
grep -q '^UsePAM yes' /etc/ssh/sshd_config || echo 'UsePAM yes' >> /etc/ssh/sshd_config
systemctl restart ssh
/opt/callerid/venv/bin/callerid doctor || true
