"""One scenario on the native core, for ab.sh and for profiling: python drive_native.py MODE SECONDS

MODE: get1 (sequential GETs of 1 of 100 keys), get100 (of all 100), threads16 (16 threads
sharing one client, GETs of 1 key); each followed by matrix(), as benches/python_client.py
--cores does. Starts its own redis-server and proxy (PROXY_BIN, --shards 1), writes the 100 keys
and warms the hot cache, then prints "ready PID" and, once WAIT_FILE exists (when set; a
profiler attaches meanwhile), runs for SECONDS and prints client CPU per call
(time.process_time()) and calls/s."""
import os, sys, time, threading, random, subprocess, tempfile, shutil, signal
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benches"))
import python_client as pc
import featureproxy

mode, secs = sys.argv[1], float(sys.argv[2])
proxy_bin = os.environ.get("PROXY_BIN", str(ROOT / "target" / "release" / "featureproxy"))
tmp = tempfile.mkdtemp(prefix="fp-drive-native-")
rport, pport, sport = pc.free_port(), pc.free_port(), pc.free_port()
r = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
pc.wait_port(rport, r, "redis")
p = subprocess.Popen([proxy_bin, "serve", "--config", str(ROOT / "examples" / "features.toml"), "--listen", f"127.0.0.1:{pport}", "--stats-listen", f"127.0.0.1:{sport}", "--redis", f"redis://127.0.0.1:{rport}", "--shards", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    pc.wait_port(pport, p, "proxy")
    c = featureproxy.Client("127.0.0.1", pport, timeout=5, pool_size=2)
    assert c.impl == "native"
    keys = [f"user:{i}".encode() for i in range(100)]
    rng = random.Random(7)
    c.put("user_features", {k: (int(time.time()*1000), [rng.random() for _ in range(16)]) for k in keys})
    for _ in range(3):
        c.get("user_features", keys)
    one = [[k] for k in keys]
    go = threading.Event(); stop = threading.Event(); counts = [0]*16
    def w(t):
        go.wait()
        i = t
        while not stop.is_set():
            i = (i + 1) % 100
            c.get("user_features", one[i]).matrix()
            counts[t] += 1
    ts = [threading.Thread(target=w, args=(t,)) for t in range(16)] if mode == "threads16" else []
    for t in ts: t.start()
    print("ready", os.getpid(), flush=True)
    if os.environ.get("WAIT_FILE"):
        while not os.path.exists(os.environ["WAIT_FILE"]):
            time.sleep(0.05)
    end = time.perf_counter() + secs
    n = 0
    c0 = time.process_time(); t0 = time.perf_counter()
    if mode == "get1":
        i = 0
        while time.perf_counter() < end:
            for _ in range(200):
                i = (i + 1) % 100
                c.get("user_features", one[i]).matrix()
            n += 200
    elif mode == "get100":
        while time.perf_counter() < end:
            for _ in range(100):
                c.get("user_features", keys).matrix()
            n += 100
    else:
        go.set()
        time.sleep(secs); stop.set()
        for t in ts: t.join()
        n = sum(counts)
    cpu = time.process_time() - c0; wall = time.perf_counter() - t0
    print(f"{mode}: {n} calls, {cpu/n*1e6:.1f} us CPU/call, {n/wall:,.0f}/s", flush=True)
    c.close()
finally:
    p.send_signal(signal.SIGTERM); p.wait(); r.kill(); r.wait(); shutil.rmtree(tmp, ignore_errors=True)
