#!/usr/bin/env bash
# Controller: slurmctld, Prometheus scraping every callerid daemon, Grafana with the
# callerid dashboards provisioned.
set -euo pipefail
nodes=$1
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends slurmctld prometheus apt-transport-https gnupg curl

install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/log/slurm
systemctl enable --now slurmctld

targets_tracer=""
targets_adopter=""
for i in $(seq 1 "$nodes"); do
  targets_tracer+="'node$i:9828',"
  targets_adopter+="'node$i:9829',"
done
cat > /etc/prometheus/prometheus.yml <<CONF
global:
  scrape_interval: 15s
rule_files:
  - /opt/callerid/src/dashboards/alerts/*.yml
scrape_configs:
  - job_name: callerid-tracer
    static_configs: [{targets: [${targets_tracer%,}]}]
  - job_name: callerid-adopter
    static_configs: [{targets: [${targets_adopter%,}]}]
CONF
systemctl restart prometheus

# Grafana comes from Grafana's own apt repository (not in Debian).
if ! command -v grafana-server >/dev/null; then
  install -d /etc/apt/keyrings
  curl -fsSL https://apt.grafana.com/gpg.key | gpg --dearmor -o /etc/apt/keyrings/grafana.gpg
  echo "deb [signed-by=/etc/apt/keyrings/grafana.gpg] https://apt.grafana.com stable main" > /etc/apt/sources.list.d/grafana.list
  apt-get update -q
  apt-get install -y -q grafana
fi
install -d /etc/grafana/provisioning/dashboards /etc/grafana/provisioning/datasources
if [ -d /opt/callerid/src/dashboards/provisioning ]; then
  cp /opt/callerid/src/dashboards/provisioning/*.yml /etc/grafana/provisioning/dashboards/ 2>/dev/null || true
fi
cat > /etc/grafana/provisioning/datasources/prometheus.yml <<'CONF'
apiVersion: 1
datasources:
  - name: Prometheus
    type: prometheus
    url: http://localhost:9090
    isDefault: true
CONF
systemctl enable --now grafana-server
