"""Screenshot of the int8_requantize trigger form: headless Chromium driven over the DevTools Protocol.

Usage (with `make airflow` running and AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True, so no login):
    python docs/trigger_form_screenshot.py http://127.0.0.1:8080/dags/int8_requantize OUT.png 1400 1800 Data
The last argument lists the form sections to open (comma-separated); docs/trigger-form.png joins three
such shots (Data, Calibration, Tracking) side by side, since the form opens one section at a time.
"""

import base64
import itertools
import json
import subprocess
import sys
import tempfile
import time
import urllib.request

from websockets.sync.client import connect

URL = sys.argv[1]
OUT = sys.argv[2]
WIDTH, HEIGHT = int(sys.argv[3]) if len(sys.argv) > 3 else 1280, int(sys.argv[4]) if len(sys.argv) > 4 else 2400
PORT = 9333
PROFILE = tempfile.mkdtemp(prefix="chromium-shot-")
SECTIONS = sys.argv[5].split(",") if len(sys.argv) > 5 else []
chrome = subprocess.Popen(
    [
        "chromium",
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--remote-debugging-port={PORT}",
        f"--user-data-dir={PROFILE}",
        f"--window-size={WIDTH},{HEIGHT}",
        "--hide-scrollbars",
        "about:blank",
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
try:
    for _ in range(100):
        try:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json/list"))
            page = next(t for t in targets if t["type"] == "page")
            break
        except Exception:
            time.sleep(0.2)
    ids = itertools.count(1)
    with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:

        def call(method, **params):
            i = next(ids)
            ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == i:
                    if "error" in msg:
                        raise RuntimeError(msg["error"])
                    return msg.get("result", {})

        def js(expr):
            r = call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
            return r.get("result", {}).get("value")

        def wait_js(expr, timeout=60):
            end = time.time() + timeout
            while time.time() < end:
                v = js(expr)
                if v:
                    return v
                time.sleep(0.3)
            raise TimeoutError(expr)

        call("Page.enable")
        call(
            "Page.addScriptToEvaluateOnNewDocument",
            source="window.DLG = () => [...document.querySelectorAll('[role=dialog]')]"
            ".find(d => d.innerText.includes('Trigger Dag'));",
        )
        call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        call("Page.navigate", url=URL)
        wait_js("[...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Trigger')")
        time.sleep(1.0)
        js(
            "[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Trigger').click()"
        )  # opens the dialog
        wait_js("!!DLG()")
        time.sleep(4.0)

        def click_at(expr):
            x, y = js(
                f"(() => {{ const e = {expr}; e.scrollIntoView({{block: 'center'}}); "
                "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
            )
            for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
                call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

        for section in SECTIONS:
            click_at(
                f"[...DLG().querySelectorAll('[data-part=item-trigger]')].find(b => b.innerText.trim() === '{section}')"
            )
            time.sleep(0.8)
        print(
            "states:",
            js(
                "JSON.stringify([...DLG().querySelectorAll('[data-part=item-trigger]')]"
                ".map(b => [b.innerText, b.getAttribute('data-state')]))"
            ),
        )
        print("dialog text:", js("DLG().innerText")[:300])
        rect = js("""(() => { const d = DLG();
            const r = d.getBoundingClientRect();
            return [r.x, r.y, r.width, r.height, d.scrollHeight, d.clientHeight]; })()""")
        print("dialog rect:", rect)
        x, y, w, h = rect[:4]
        shot = call("Page.captureScreenshot", format="png", clip={"x": x, "y": y, "width": w, "height": h, "scale": 1})
        open(OUT, "wb").write(base64.b64decode(shot["data"]))
finally:
    chrome.terminate()
    chrome.wait(10)
