#!/usr/bin/env python3
"""End-to-end client: an unmodified Triton HTTP client (tritonclient) that reaches Triton through ``http_proxy``.

infer: sends the mug picture to MODEL at URL, prints the seed-style result line; with REFERENCE_ONNX, compares the
output with onnxruntime on the *plaintext* model and exits 0 only if they are equal.
load:  CONCURRENCY clients for DURATION seconds; prints one JSON line of figures (requests, errors, req/s, p50,
p99 in ms). Exit 1 if any request failed.
refused: expects the request to be refused by the client proxy: tritonclient fails, and a plain request through the
         proxy gets HTTP 502 with ``x-cinfer-atls-check: <--expect-check>`` (default ``policy``); prints the check.

The proxy comes from ``$http_proxy`` (or ``--proxy``), as for any client that honours it.
"""
import argparse
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse

import numpy as np


def make_client(url: str, proxy: str | None, timeout: float = 60.0):
    """A stock tritonclient HTTP client; with a proxy, its transport (geventhttpclient, which supports forward
    proxies but does not read ``http_proxy`` by itself) is pointed at the proxy, so requests go out in absolute
    form exactly as ``http_proxy`` clients send them."""
    import tritonclient.http as httpclient
    from geventhttpclient import HTTPClient

    client = httpclient.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
    if proxy:
        p = urllib.parse.urlparse(proxy if "://" in proxy else "http://" + proxy)
        client._client_stub = HTTPClient.from_url(
            client._parsed_url,
            proxy_host=p.hostname,
            proxy_port=p.port,
            connection_timeout=timeout,
            network_timeout=timeout,
        )
    return client


_SIGNATURES: dict[str, tuple[str, int, str]] = {}


def signature(client, model: str) -> tuple[str, int, str]:
    """(input name, input rank, output name) of ``model`` from its metadata, fetched once: the python layout declares
    [-1, 3, 64, 64] -> [-1, 4], a standard (seed) repository e.g. [3, 64, 64] -> [4] (with reshapes)."""
    if model not in _SIGNATURES:
        meta = client.get_model_metadata(model)
        _SIGNATURES[model] = (meta["inputs"][0]["name"], len(meta["inputs"][0]["shape"]), meta["outputs"][0]["name"])
    return _SIGNATURES[model]


def infer_once(client, model: str, x: np.ndarray) -> np.ndarray:
    """Infers the batch of one ``x`` (1 x 3 x 64 x 64), sent without its batch dim where the model declares none;
    returns the output as a batch of one (1 x classes)."""
    import tritonclient.http as httpclient

    in_name, rank, out_name = signature(client, model)
    if rank == x.ndim - 1:
        x = x[0]
    inp = httpclient.InferInput(in_name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = httpclient.InferRequestedOutput(out_name, binary_data=True)
    got = client.infer(model, [inp], outputs=[out]).as_numpy(out_name)
    return got.reshape(1, -1)


def reference(onnx_path: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0].reshape(1, -1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["infer", "load", "refused"])
    ap.add_argument("--url", required=True, help="host:port of the (attested) Triton endpoint")
    ap.add_argument("--proxy", default=os.environ.get("http_proxy"), help="client proxy (default: $http_proxy)")
    ap.add_argument("--model", default="classifier")
    ap.add_argument("--input", required=True, help=".npy input")
    ap.add_argument("--reference-onnx", help="plaintext ONNX model for the expected output")
    ap.add_argument("--labels", help="labels.txt of the plaintext model")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--expect-check", default="policy", help="refused: the check the client proxy must name")
    a = ap.parse_args()
    x = np.load(a.input).astype(np.float32)

    if a.mode == "infer":
        t = time.monotonic()
        got = infer_once(make_client(a.url, a.proxy), a.model, x)
        ms = (time.monotonic() - t) * 1e3
        labels = open(a.labels).read().split("\n") if a.labels else None
        top = int(got[0].argmax())
        name = labels[top] if labels else str(top)
        print(f"{got[0][top]:.6f} ({top}) = {name}")
        if not a.reference_onnx:
            print(json.dumps({"ms": round(ms, 1)}))
            return 0
        want = reference(a.reference_onnx, x)
        same = np.array_equal(got, want)
        print(json.dumps({"equal_to_plaintext_onnxruntime": same, "max_abs_diff": float(np.abs(got - want).max()), "ms": round(ms, 1)}))
        return 0 if same else 1

    if a.mode == "refused":
        # The stock client must fail, and the client proxy's answer must be the refusal naming the check: a 502
        # with `x-cinfer-atls-check: <check>` (any other failure is not the refusal this mode is about).
        import http.client

        try:
            infer_once(make_client(a.url, a.proxy), a.model, x)
            print("NOT refused: the request went through")
            return 1
        except Exception as e:  # noqa: BLE001  (a 502 with a text body surfaces as a decode error in tritonclient)
            print(f"tritonclient failed: {type(e).__name__}: {str(e)[:200]}")
        p = urllib.parse.urlparse(a.proxy if "://" in a.proxy else "http://" + a.proxy)
        conn = http.client.HTTPConnection(p.hostname, p.port, timeout=60)
        conn.request("GET", f"http://{a.url}/v2/models/{a.model}")
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        check = r.getheader("x-cinfer-atls-check")
        print(json.dumps({"status": r.status, "check": check, "body": body[:300]}))
        if r.status == 502 and check == a.expect_check:
            print(f"refused: {check}")
            return 0
        print(f"NOT the expected refusal: want 502 with x-cinfer-atls-check: {a.expect_check}")
        return 1

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + a.duration

    def worker():
        client = make_client(a.url, a.proxy)
        while time.monotonic() < deadline:
            t = time.monotonic()
            try:
                out = infer_once(client, a.model, x)
                assert out.shape == (1, 4)
                ok = True
            except Exception as e:  # noqa: BLE001
                ok = False
                with lock:
                    errors.append(repr(e)[:200])
            with lock:
                if ok:
                    latencies.append(time.monotonic() - t)

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - start
    lat = sorted(latencies)
    res = {
        "concurrency": a.concurrency,
        "seconds": round(wall, 1),
        "requests": len(lat),
        "errors": len(errors),
        "first_errors": errors[:3],
        "req_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(statistics.median(lat) * 1e3, 2) if lat else None,
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 2) if lat else None,
    }
    print(json.dumps(res))
    return 0 if not errors and lat else 1


if __name__ == "__main__":
    sys.exit(main())
