#!/usr/bin/env bash
# Every VM: hosts file, MUNGE with the lab's shared key, Slurm config, test users.
# Arguments: NODES "IP NAME"...
set -euo pipefail
nodes=$1
shift
export DEBIAN_FRONTEND=noninteractive

for entry in "$@"; do
  grep -qF "$entry" /etc/hosts || echo "$entry" >> /etc/hosts
done

apt-get update -q
apt-get install -y -q --no-install-recommends munge slurm-client python3-venv

# One MUNGE key for the whole lab, kept in the synced folder's parent on the host side.
key=/opt/callerid/src/vagrant/.munge.key
if [ ! -s "$key" ]; then
  dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
fi
install -o munge -g munge -m 0400 "$key" /etc/munge/munge.key
systemctl restart munge

install -d /etc/slurm
bash /opt/callerid/src/vagrant/provision/slurm-conf.sh "$nodes" > /etc/slurm/slurm.conf
cat > /etc/slurm/cgroup.conf <<'CONF'
CgroupPlugin=autodetect
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainDevices=yes
CONF

# Test users with the same uid on every node and a shared key pair.
for u in alice bob; do
  id "$u" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --uid "$([ "$u" = alice ] && echo 2001 || echo 2002)" "$u"
  kdir=/opt/callerid/src/vagrant/.keys
  mkdir -p "$kdir"
  [ -f "$kdir/$u" ] || ssh-keygen -q -t ed25519 -N '' -C "$u@callerid-lab" -f "$kdir/$u"
  install -d -o "$u" -g "$u" -m 0700 "/home/$u/.ssh"
  install -o "$u" -g "$u" -m 0600 "$kdir/$u" "/home/$u/.ssh/id_ed25519"
  install -o "$u" -g "$u" -m 0644 "$kdir/$u.pub" "/home/$u/.ssh/authorized_keys"
done
