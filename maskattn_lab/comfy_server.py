"""A real ComfyUI server process on localhost with this extension in custom_nodes/, for
the main job and the end-to-end tests: started headless in a temporary state folder
(the extension itself offers its shipped heads), stopped on exit."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

SERVER_START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 1800


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_command(host: Path, port: int, state: Path, extra_args: tuple[str, ...] = ()) -> list[str]:
    state.mkdir(parents=True, exist_ok=True)
    for sub in ("user/default", "temp", "output", "input"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    # Without this the first page load opens the template browser over the graph.
    (state / "user/default/comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return [sys.executable, str(host / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
            "--user-directory", str(state / "user"), "--temp-directory", str(state / "temp"),
            "--output-directory", str(state / "output"), "--input-directory", str(state / "input"),
            "--database-url", "sqlite:///:memory:", "--disable-auto-launch", *extra_args]


class Host:
    """A ComfyUI server process on localhost, stopped on exit. ``extra_args`` go to its
    main.py; ``log`` (a file) takes its console instead of this one."""

    def __init__(self, host: Path, port: int, state: Path, extra_args: tuple[str, ...] = (), log: Path | None = None):
        self.url = f"http://127.0.0.1:{port}"
        self.output_dir = state / "output"
        self.log = open(log, "w") if log is not None else None
        self.process = subprocess.Popen(host_command(host, port, state, extra_args), cwd=host,
                                        stdout=self.log, stderr=subprocess.STDOUT if self.log else None)

    def peak_memory(self, reset: bool = False) -> int:
        """The server process's peak resident memory in bytes since the last reset
        (VmHWM); ``reset`` starts a new peak from the current resident set."""
        status = Path(f"/proc/{self.process.pid}/status")
        peak = int(re.search(r"VmHWM:\s+(\d+) kB", status.read_text()).group(1)) * 1024
        if reset:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return peak

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.load(r)

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"the host refused the prompt: {e.read().decode()}") from None

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode} while starting")
            try:
                return self.get("/object_info")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        raise RuntimeError(f"ComfyUI did not answer within {SERVER_START_TIMEOUT_S} s")

    def run(self, prompt: dict) -> dict:
        reply = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        prompt_id = reply["prompt_id"]
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] != "success":
                    raise RuntimeError(f"the run failed: {json.dumps(entry['status']['messages'])[:2000]}")
                return entry
            if self.process.poll() is not None:
                raise RuntimeError("ComfyUI exited during the run")
            time.sleep(0.5)
        raise RuntimeError(f"the run did not finish within {RUN_TIMEOUT_S} s")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.log is not None:
            self.log.close()


def saved_images(entry: dict) -> list[tuple[str, str]]:
    """(subfolder, file name) of each image the prompt saved, in the order of the saving
    nodes' ids (the order the graph was written in; the history's own order is not)."""
    outputs = sorted(entry["outputs"].items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0)
    return [(img.get("subfolder", ""), img["filename"])
            for _, out in outputs for img in out.get("images", []) if img.get("type") == "output"]
