# Input: the fan-out, rpc and idle rows of bench.sh, each block preceded by a line "#fanout",
# "#rpc" or "#idle". Output: one summary row per server with ratios against Switchboard.
function trim(s) { gsub(/^ +| +$/, "", s); return s }
/^#/ { section = substr($0, 2); next }
/^\|/ {
  n = split($0, f, "|")
  name = trim(f[2])
  if (!(name in seen)) { seen[name] = 1; order[++count] = name }
  if (section == "fanout") {
    delivered = trim(f[5]) + 0; loss = trim(f[6]) + 0; p99 = trim(f[8]) + 0
    if (p99 <= 100 && loss == 0 && delivered > best[name]) best[name] = delivered
    if (delivered > top[name]) top[name] = delivered
  } else if (section == "rpc") {
    rps[name] = trim(f[4]) + 0; rp99[name] = trim(f[6]) + 0
  } else if (section == "idle") {
    kib[name] = trim(f[6]) + 0
  }
}
function ratio(a, b) { return (b > 0) ? sprintf("%.1f×", a / b) : "∞" }
END {
  # Throughput against the best Switchboard row (its configurations differ only in the
  # queue bound); latency and memory against the first row (the defaults).
  for (i = 1; i <= count; i++) if (order[i] ~ /^switchboard/) {
    if (best[order[i]] > refbest) refbest = best[order[i]]
    if (top[order[i]] > reftop) reftop = top[order[i]]
  }
  ref = order[1]
  for (i = 1; i <= count; i++) {
    s = order[i]; own = (s ~ /^switchboard/)
    printf "| %s | %d | %s | %d | %s | %s | %s | %s |\n", s, best[s],
      own ? "–" : ratio(refbest, best[s]), top[s], own ? "–" : ratio(reftop, top[s]),
      (s in rp99) ? rp99[s] : "–", (s in rp99 && !own) ? ratio(rp99[s], rp99[ref]) : "–",
      (s in kib) ? kib[s] ((own) ? "" : " (" ratio(kib[s], kib[ref]) ")") : "–"
  }
}
