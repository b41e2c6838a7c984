"""The web chat `r1local serve` shows at `/`, in a real headless browser.

Debian's `chromium` driven by Playwright for Python (the system browser: nothing is
downloaded at test time), against the real `r1local serve` process on 127.0.0.1 with real
models through llama.cpp: the micro reasoner (a tiny trained R1-format model) and the R1
stand-in (random weights, its reasoning never ends). The browser can resolve no name and
reach no address but loopback, as on a machine without network; every request it makes is
logged and checked against the server's own host.

Screenshots of the main states go to docs/screenshots/, which the README links
(R1LOCAL_SCREENSHOTS moves them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("R1LOCAL_SCREENSHOTS", ROOT / "docs" / "screenshots"))
CHROMIUM = shutil.which("chromium")
QUESTION = "What is 3+4?"
REASONING = "I need to add 3 and 4. three plus four is seven."
TIMEOUT_MS = 60_000

try:
    from playwright.sync_api import Page, expect, sync_playwright

    # a reply on a busy 2-core machine can take longer than expect's default 5 s
    expect.set_options(timeout=TIMEOUT_MS)
except ImportError:  # the test extra is not installed: said by _browser_or_skip
    sync_playwright = None
    Page = object


def _browser_or_skip() -> None:
    if CHROMIUM is not None and sync_playwright is not None:
        return
    why = ("the browser tests need Debian's chromium (`sudo apt-get install -y chromium`)"
           if CHROMIUM is None else
           "the browser tests need playwright (the test extra: `pip install -e '.[test]'`)")
    if os.environ.get("CI") == "true":  # on CI a missing browser is a broken setup
        pytest.fail(why)
    pytest.skip(why)


# ---- the server: `r1local serve` in its own process, its stderr kept ------------------

class Served:
    """`r1local serve --port 0 FLAGS` (or, with ``argv``, any r1local command that serves)."""

    def __init__(self, home: Path, *flags: str, env: dict[str, str] | None = None,
                 argv: tuple[str, ...] | None = None) -> None:
        full = {**os.environ, "R1LOCAL_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
        full.pop("R1LOCAL_API_KEY", None)
        argv = argv or ("serve", "--port", "0", *flags)
        self.proc = subprocess.Popen([sys.executable, "-m", "r1local", *argv], cwd=ROOT,
                                     env=full, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.url = ""
        found = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
                if m:
                    self.url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(90) or not self.url:
            self.stop()
            raise AssertionError("r1local serve did not start:\n" + "".join(self.lines))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, pattern: str, within: float = 20.0) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log)
            if m:
                return m.group(0)
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in the server's log:\n{self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _import(home: Path, path: Path, name: str) -> None:
    env = {**os.environ, "R1LOCAL_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "r1local", "import", str(path), "--name", name,
                    "--link"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def home(tmp_path_factory, micro_reasoner, r1_standin) -> Path:
    """A store with the two models the page lists: `micro` and `standin`."""
    home = tmp_path_factory.mktemp("web-home")
    _import(home, micro_reasoner, "micro")
    _import(home, r1_standin, "standin")
    return home


def fake_browser(folder: Path) -> tuple[dict[str, str], Path]:
    """$BROWSER (Python's webbrowser runs it) as a script that writes down the URL it is
    given: (the environment to set, the file the URL lands in)."""
    record = folder / "browser.sh"
    record.write_text(f'#!/bin/sh\necho "$1" > {folder / "opened.txt"}\n')
    record.chmod(0o755)
    return {"BROWSER": str(record)}, folder / "opened.txt"


def opened_url(landed: Path, within: float = 20.0) -> str:
    deadline = time.monotonic() + within
    while not landed.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return landed.read_text().strip()


@pytest.fixture(scope="module")
def opened(home, tmp_path_factory) -> tuple[Served, str]:
    """`r1local serve --open`: the page the tests load is the one --open opened."""
    env, landed = fake_browser(tmp_path_factory.mktemp("browser"))
    srv = Served(home, "--open", "--keep-alive", "-1", env=env)
    try:
        yield srv, opened_url(landed)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    _browser_or_skip()
    with sync_playwright() as p:
        # the system browser; it resolves no name and reaches nothing but loopback
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9"])
        yield b
        b.close()


class Tab:
    """A fresh browser profile (its own localStorage) with every request logged."""

    def __init__(self, browser, url: str, **kw) -> None:
        self.context = browser.new_context(**kw)
        self.requests: list[str] = []
        self.errors: list[str] = []  # console errors (a CSP refusal among them), page errors
        self.page: Page = self.context.new_page()
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.set_default_timeout(TIMEOUT_MS)
        self.url = url
        self.page.goto(url)

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser, opened):
    t = Tab(browser, opened[1])
    yield t
    t.close()


def settings(page: Page, **values: str) -> None:
    page.get_by_role("button", name="Settings").click()
    for label, value in values.items():
        page.get_by_label(label, exact=False).fill(value)
    page.get_by_role("button", name="Done").click()


def choose(page: Page, model: str) -> None:
    page.get_by_label("Model", exact=True).select_option(f"{model}:latest")


def ask(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def watch_thinking(page: Page) -> None:
    """Record, on every change, whether the reasoning block was open and what it said."""
    page.evaluate("""() => {
        window.__seen = [];
        window.__status = [];
        window.__bars = [];  // every load fraction the page showed, in order
        new MutationObserver(() => {
            const d = document.querySelector('.message.assistant details.thinking');
            if (d && !d.hidden) window.__seen.push([d.open, d.querySelector('summary').textContent]);
        }).observe(document.getElementById('messages'),
                   {subtree: true, childList: true, characterData: true, attributes: true});
        new MutationObserver((records) => {
            window.__status.push(document.getElementById('status').textContent);
            for (const r of records) for (const n of r.addedNodes) {
                if (n.nodeName === 'PROGRESS') window.__bars.push(n.value);
            }
        })
            .observe(document.getElementById('status'), {subtree: true, childList: true});
    }""")


def check_load(ndjson: str, model: str) -> None:
    """/web/loading's lines are llama.cpp's fractions for a real load: several, rising,
    ending at 1, then the line that says it loaded."""
    lines = [json.loads(x) for x in ndjson.splitlines()]
    fractions = [x["progress"] for x in lines[:-1]]
    assert lines[-1] == {"model": model, "done": True, "loaded": True, "progress": 1.0}, lines
    assert len(fractions) >= 2 and fractions[0] < 1.0 and fractions[-1] == 1.0, fractions
    assert all(a < b for a, b in zip(fractions, fractions[1:])), fractions


# ---- the tests ---------------------------------------------------------------------------

def test_root_serves_the_page_to_browsers_and_the_probe_text_to_others(opened):
    srv, url = opened
    assert url == srv.url + "/"  # --open opened the page at the server's own address
    assert "opening " + url in srv.log
    probe = httpx.get(srv.url + "/")  # what Ollama clients send: */*
    assert probe.status_code == 200 and probe.text == "r1local is running"
    page = httpx.get(srv.url + "/", headers={"Accept": "text/html,application/xhtml+xml,*/*"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/web/app.js">' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.head(srv.url + "/").status_code == 200
    for asset in ("/web/app.js", "/web/vendor/katex/katex.min.js", "/web/vendor/VENDOR.md"):
        assert httpx.get(srv.url + asset).status_code == 200, asset
    unknown = httpx.get(srv.url + "/web/loading", params={"model": "nosuch"})
    assert unknown.status_code == 404 and "nosuch" in unknown.json()["error"]
    verdicts = {m["name"]: m for m in httpx.get(srv.url + "/web/models").json()["models"]}
    assert verdicts["micro:latest"]["fits"] and verdicts["micro:latest"]["reason"]
    # the page's thinking budget: Ollama's options plus r1local's own think_budget
    def chat(**options) -> dict:
        return httpx.post(srv.url + "/api/chat", timeout=120, json={
            "model": "micro", "stream": False, "options": {"temperature": 0, **options},
            "keep_alive": 0,  # unloaded after: the browser test sees the page wait for a load
            "messages": [{"role": "user", "content": QUESTION}]}).json()["message"]

    assert chat()["thinking"] == REASONING
    short = chat(think_budget=3)["thinking"]
    assert short and len(short) < len(REASONING) and REASONING.startswith(short.strip())


def test_ask_reasoning_collapses_answer_renders_and_reload_keeps_it(tab, opened):
    page = tab.page
    expect(page.locator("#model option")).to_have_count(2)
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == \
        "rgb(255, 255, 255)"  # the light palette, as this browser's system theme is light
    choose(page, "micro")
    settings(page, Temperature="0")
    # Shift+Enter is a new line in the box, not a send
    box = page.get_by_label("Message", exact=True)
    box.fill("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second")
    expect(box).to_have_value("first line\nsecond")
    expect(page.locator(".message.user")).to_have_count(0)
    watch_thinking(page)
    # hold the question in the browser a moment: the page says the model is loading
    held = []
    page.route("**/api/chat", lambda route: held.append(route))
    ask(page, QUESTION)
    expect(page.locator("#status")).to_have_text("Loading micro:latest… 0%")
    expect(page.locator("#status progress")).to_have_attribute("aria-label",
                                                               "Loading micro:latest")
    tab.shot("loading")
    for _ in range(500):  # the page sends the question right after saying so
        if held:
            break
        page.wait_for_timeout(20)
    held[0].continue_()
    page.unroute("**/api/chat")
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".answer strong")).to_have_text("7")
    expect(reply.locator(".answer")).to_have_text("3 + 4 = 7.")
    thinking = reply.locator("details.thinking")
    expect(thinking.locator("summary")).to_have_text(re.compile(r"^Thought for [\d.]+ s$"))
    assert thinking.get_attribute("open") is None  # collapsed once the answer came
    expect(thinking.locator(".thinking-text")).to_have_text(REASONING)
    seen = page.evaluate("window.__seen")
    # it was open, live, with its counter, while the reasoning streamed
    assert any(is_open and re.fullmatch(r"Thinking… \d+ s", label) for is_open, label in seen)
    # the first reply loaded the model: the page showed llama.cpp's own load fractions as
    # /web/loading reported them, rising through values between 0 and 1 to 1
    bars = page.evaluate("window.__bars")
    assert bars == sorted(bars) and bars[-1] == 1.0 and any(0 < b < 1 for b in bars), bars
    expect(reply.locator(".meta")).to_have_text(
        re.compile(r"^\d+ tokens · [\d.]+ tok/s · context \d+ of \d+$"))
    tab.shot("answer")
    thinking.locator("summary").click()
    tab.shot("reasoning-open")

    page.reload()
    reply = page.locator(".message.assistant").last
    expect(page.locator(".message.user .body")).to_have_text(QUESTION)
    expect(reply.locator(".answer strong")).to_have_text("7")
    expect(page.locator("#conversations .conv-title")).to_have_text(QUESTION)
    # nothing left the machine: every request went to the server that served the page
    host = urlsplit(opened[0].url).netloc
    assert tab.requests and {urlsplit(u).netloc for u in tab.requests} == {host}, tab.requests
    assert not tab.errors  # every script and font loaded, nothing was refused


def test_edit_a_turn_and_regenerate(tab):
    page = tab.page
    choose(page, "micro")
    settings(page, Temperature="0")
    ask(page, "What is 2+3?")
    expect(page.locator(".message.assistant .answer strong")).to_have_text("5")
    expect(page.locator("#stop")).to_be_hidden()  # the reply is finished
    page.get_by_role("button", name="Edit").click()
    edit = page.get_by_label("Edit your message")
    edit.fill(QUESTION)
    edit.press("Enter")
    expect(page.locator(".message.assistant .answer strong")).to_have_text("7")
    expect(page.locator(".message")).to_have_count(2)  # the old reply went with the old turn
    expect(page.locator("#stop")).to_be_hidden()
    page.evaluate("document.querySelector('.message.assistant').__old = true")
    page.get_by_role("button", name="Regenerate").click()
    expect(page.locator("#stop")).to_be_hidden()
    assert page.evaluate("!document.querySelector('.message.assistant').__old")  # a new reply
    expect(page.locator(".message")).to_have_count(2)
    expect(page.locator(".message.assistant .answer strong")).to_have_text("7")


def test_thinking_budget_from_the_settings_cuts_the_reasoning(tab):
    page = tab.page
    choose(page, "micro")
    # 3 tokens of reasoning; the answer after a cut reasoning rambles: 40 tokens of it
    settings(page, Temperature="0", **{"Thinking budget": "3", "Max reply tokens": "40"})
    ask(page, QUESTION)
    expect(page.locator("#stop")).to_be_hidden()
    thought = page.locator(".message.assistant .thinking-text").text_content().strip()
    assert thought and len(thought) < len(REASONING) and REASONING.startswith(thought)
    expect(page.locator(".message.assistant summary")).to_have_text(
        re.compile(r"^Thought for [\d.]+ s$"))


def test_conversations_rename_export_delete(tab):
    import json

    page = tab.page
    choose(page, "micro")
    settings(page, Temperature="0", **{"System prompt": "Be brief."})
    ask(page, QUESTION)
    expect(page.locator("#stop")).to_be_hidden()
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#conversations li")).to_have_count(2)
    expect(page.locator(".message")).to_have_count(0)
    page.get_by_role("button", name="Settings").click()  # a new chat starts from the defaults
    expect(page.get_by_label("System prompt")).to_have_value("")
    expect(page.get_by_label("Temperature")).to_have_value("")
    page.get_by_role("button", name="Done").click()
    first = page.locator("#conversations li").nth(1)
    page.once("dialog", lambda d: d.accept("Arithmetic"))
    first.get_by_role("button", name=f"Rename {QUESTION}").click()
    expect(first.locator(".conv-title")).to_have_text("Arithmetic")
    first.locator(".conv-title").click()
    expect(page.locator(".message.assistant .answer strong")).to_have_text("7")
    page.get_by_role("button", name="Settings").click()  # and the first kept its own
    expect(page.get_by_label("System prompt")).to_have_value("Be brief.")
    page.get_by_role("button", name="Done").click()
    with page.expect_download() as got:
        page.get_by_role("button", name="JSON").click()
    data = json.loads(Path(got.value.path()).read_text())
    assert got.value.suggested_filename == "Arithmetic.json"
    assert data["title"] == "Arithmetic" and data["model"] == "micro:latest"
    assert data["settings"]["system"] == "Be brief." and data["settings"]["temperature"] == 0
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["thinking"] == REASONING
    with page.expect_download() as got:
        page.get_by_role("button", name="Markdown").click()
    md = Path(got.value.path()).read_text()
    assert md.startswith("# Arithmetic\n") and "3 + 4 = **7**." in md and REASONING in md
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete Arithmetic").click()
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#conversations .conv-title")).to_have_text("New chat")


def test_stop_cancels_a_long_reply_on_the_server(tab, opened):
    srv = opened[0]
    page = tab.page
    choose(page, "standin")
    settings(page, **{"Max reply tokens": "100000"})
    ask(page, "Tell me a long story.")
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".thinking-text")).not_to_be_empty()
    summary = reply.locator("summary")
    expect(summary).to_have_text(re.compile(r"^Thinking… \d+ s$"))
    seconds = int(re.search(r"\d+", summary.text_content()).group(0))
    expect(summary).to_have_text(f"Thinking… {seconds + 1} s")  # the counter moves on
    tab.shot("thinking")
    page.keyboard.press("Escape")  # Esc stops, as the Stop button does
    expect(reply.locator(".error")).to_have_text("Stopped.")
    expect(reply.locator("summary")).to_have_text(re.compile(r"^Thought for [\d.]+ s \(stopped\)$"))
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    line = srv.wait_for_log(r"r1local: cancelled a reply from standin after (\d+) tokens")
    assert int(re.search(r"after (\d+)", line).group(1)) < 100000


def test_context_full_is_said(tab):
    page = tab.page
    choose(page, "standin")
    settings(page, **{"Context": "256", "Max reply tokens": "100000"})
    ask(page, "Hi")
    error = page.locator(".message.assistant .error")
    expect(error).to_have_text(re.compile(r"^The context is full \(\d+ tokens\)"))
    tab.shot("context-full")
    # a question that cannot fit the window at all: the server's 400, said the same way
    page.get_by_role("button", name="New chat").click()
    choose(page, "micro")
    settings(page, Context="256")
    ask(page, "seven " * 400)
    expect(page.locator(".message.assistant .error")).to_have_text(re.compile(
        r"^The conversation no longer fits the model's context: the prompt is .* context "
        r"holds 256.*Start a new chat, or raise Context in Settings\.$"))


def test_model_output_is_sanitised_and_math_is_drawn(tab):
    page = tab.page
    out = page.evaluate("""async () => {
        const { renderInto } = await import('/web/render.js');
        const div = document.createElement('div');
        document.body.append(div);
        renderInto(div, 'So $x^2$ and \\\\boxed{7}: $$\\\\boxed{7}$$ costs $5 and $10.\\n\\n' +
            '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>' +
            '[a](javascript:window.__pwned=3)\\n\\n```python\\nprint("$x$")\\n```');
        return { html: div.innerHTML, text: div.textContent,
                 katex: div.querySelectorAll('.katex').length,
                 display: div.querySelectorAll('.katex-display').length,
                 boxed: div.querySelectorAll('.katex .boxpad, .katex .fbox').length,
                 img: div.querySelectorAll('img').length, script: div.querySelectorAll('script').length,
                 link: div.querySelector('a')?.getAttribute('href') ?? null,
                 code: div.querySelector('pre code')?.className, codeText: div.querySelector('pre code')?.textContent };
    }""")
    assert out["katex"] == 2 and out["display"] == 1 and out["boxed"] >= 1
    assert out["img"] == 0 and out["script"] == 0 and not (out["link"] or "").startswith("javascript")
    assert "<img" in out["text"]  # shown as text, not parsed
    assert page.evaluate("window.__pwned") is None
    assert "costs $5 and $10." in out["text"]  # prices are no math
    assert "hljs" in out["code"] and out["codeText"] == 'print("$x$")\n'  # no math in code


def test_phone_width_and_dark_theme(browser, opened):
    t = Tab(browser, opened[1], viewport={"width": 390, "height": 800}, color_scheme="dark")
    try:
        page = t.page
        expect(page.locator("#model option")).to_have_count(2)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no side-scroll
        expect(page.locator("#sidebar")).not_to_be_in_viewport()
        bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert bg == "rgb(21, 24, 28)"  # the dark palette
        t.shot("phone-dark")
        page.get_by_role("button", name="Conversations").click()
        expect(page.locator("#sidebar")).to_be_in_viewport(ratio=1)
        expect(page.get_by_role("button", name="Conversations")).to_have_attribute(
            "aria-expanded", "true")
        page.wait_for_timeout(300)  # the drawer's slide
        t.shot("phone-drawer")
        page.get_by_role("button", name="Close").click()
        expect(page.locator("#sidebar")).not_to_be_in_viewport()
    finally:
        t.close()


def test_api_key_unfitting_model_and_server_down(browser, home, tmp_path):
    """With --api-key the page asks for the key; a wrong one is said. A machine too small
    for a model (a profile) marks it with the planner's reason. A server that went away is
    said too."""
    profile = tmp_path / "tiny.toml"
    profile.write_text('ram = "64M"\ncores = 2\n')
    srv = Served(home, "--api-key", "s3cret", env={"R1LOCAL_PROFILE": str(profile)})
    t = Tab(browser, srv.url + "/")
    try:
        # the page and its files need no key; the probe, the APIs and /web/models do
        assert httpx.get(srv.url + "/", headers={"Accept": "text/html"}).status_code == 200
        assert httpx.get(srv.url + "/web/app.js").status_code == 200
        for path in ("/", "/web/models", "/web/loading?model=micro", "/api/tags"):
            assert httpx.get(srv.url + path).status_code == 401, path
        page = t.page
        dialog = page.get_by_role("dialog", name="API key")
        expect(dialog).to_be_visible()
        page.get_by_label("Key", exact=True).fill("wrong")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#status")).to_contain_text("The server refused the API key")
        t.shot("wrong-key")
        expect(dialog).to_be_visible()
        page.get_by_label("Key", exact=True).fill("s3cret")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#model option")).to_have_count(2)
        expect(page.locator("#model option").first).to_contain_text("(does not fit)")
        expect(page.locator("#model-note")).to_contain_text("Does not fit this machine:")
        page.reload()  # the key was kept: no dialog this time
        expect(page.locator("#model option")).to_have_count(2)
        expect(dialog).to_be_hidden()
        srv.stop()
        ask(page, QUESTION)
        expect(page.locator(".message.assistant .error")).to_contain_text("cannot be reached")
        expect(page.locator("#status")).to_contain_text("Is “r1local serve” still running?")
        t.shot("server-down")
    finally:
        t.close()
        srv.stop()


def test_run_web_serves_a_file_and_the_picker_gives_its_fit(browser, home, tmp_path,
                                                            micro_reasoner):
    """`run --web FILE` with a store that does not hold FILE: the page lists the file, with
    the planner's note as for store models, and loading it had reported its progress."""
    env, landed = fake_browser(tmp_path)
    srv = Served(tmp_path / "empty-home", argv=("run", "--web", str(micro_reasoner)),
                 env={**env, "R1LOCAL_HOST": "127.0.0.1:0"})  # port 0: a free one
    try:
        assert opened_url(landed) == srv.url + "/"
        assert re.search(r"r1local: loaded .*micro", srv.log)  # loaded before it listened
        ps = httpx.get(srv.url + "/api/ps").json()["models"]
        assert len(ps) == 1 and ps[0]["name"] == str(micro_reasoner)
        verdicts = httpx.get(srv.url + "/web/models").json()["models"]
        assert [v["name"] for v in verdicts] == [str(micro_reasoner)] and verdicts[0]["fits"]
        # the load that ran at start, as the page would follow it
        loaded = httpx.get(srv.url + "/web/loading", params={"model": str(micro_reasoner)})
        check_load(loaded.text, str(micro_reasoner))
        t = Tab(browser, srv.url + "/")
        try:
            page = t.page
            expect(page.locator("#model option")).to_have_text([str(micro_reasoner)])
            expect(page.locator("#model-note")).to_have_text(
                f"{verdicts[0]['placement']}, context {verdicts[0]['context']}")
        finally:
            t.close()
    finally:
        srv.stop()
    assert srv.proc.returncode == 0
    p = subprocess.run([sys.executable, "-m", "r1local", "run", "--web", "micro", "hello"],
                       cwd=ROOT, env={**os.environ, "R1LOCAL_HOME": str(home)},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "give no prompt" in p.stderr and "Traceback" not in p.stderr
