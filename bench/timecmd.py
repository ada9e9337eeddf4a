"""Run a command; print one JSON line with its wall time, exit status and the peak
resident memory of the process (ru_maxrss of the children), then its last stdout line.
    python3 bench/timecmd.py NAME -- CMD ARGS...    (appends to $TIMECMD_JSONL if set)"""
import json, os, resource, subprocess, sys, time

name, cmd = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
t0 = time.monotonic()
p = subprocess.run(cmd, capture_output=True, text=True)
sec = time.monotonic() - t0
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
out = [l for l in p.stdout.splitlines() if l.strip()]
err = [l for l in p.stderr.splitlines() if l.strip()]
rec = {"command": name, "seconds": round(sec, 2), "peak_rss_bytes": rss, "exit": p.returncode,
       "stdout_last": out[-1][:400] if out else "", "stderr_last": err[-1][:400] if err else ""}
line = json.dumps(rec)
print(line, flush=True)
if os.environ.get("TIMECMD_JSONL"):
    with open(os.environ["TIMECMD_JSONL"], "a") as f:
        f.write(line + "\n")
