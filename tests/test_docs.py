"""Every example in README.md and docs/ is run (a project rule): one test per block.

What is collected: every fenced block tagged ``python`` in README.md and docs/**/*.md, and
every ``sh`` / ``shell`` / ``bash`` / ``console`` block that runs ``backchannel`` or
``curl`` (a line starting with it; in ``console`` blocks, a ``$ `` line) or carries a
directive: a ``curl`` example talks to the server, so it needs the ``server`` directive to
pass. Other shell blocks (``make``, ``pip``: setting up a checkout, which the tests run
in) and other languages are left alone. The test id is ``file:line`` of the opening
fence.

How a block runs, by default:

- ``python``: the block is a complete program. It runs as ``python -W error block.py`` in
  a fresh temporary directory, within 60 s, and must exit 0 with nothing on stderr.
- shell: the block runs with ``sh -e`` in such a directory, ``backchannel`` on the PATH,
  within 60 s, and must exit 0. A comment line holding JSON (``# {"offset": 1}``) after a
  command is that command's expected output: the real output must be JSON with the same
  keys (values such as epochs differ from run to run).

The temporary directory holds ``cert.pem`` and ``key.pem`` (a certificate for localhost
and 127.0.0.1), ``ca.pem`` (the CA that signed it) and ``jwt.pub`` (an RSA public key), the
files the how-tos name. ``BACKCHANNEL_AUTH_SECRET`` and ``BACKCHANNEL_API_KEY`` are set
(other ``BACKCHANNEL_*`` variables are not passed on, but ``BACKCHANNEL_NO_EXTENSIONS``),
and so is ``NO_PROXY=*``.

A directive changes that: an HTML comment on the last non-blank line before the fence
(invisible on the rendered page):

- ``<!-- doctest: skip (REASON) -->``: not run; the reason is required, and the number of
  skipped blocks is capped (``MAX_SKIPS``): run it, or make it runnable, when you can.
- ``<!-- doctest: continues the previous block -->``: a fragment; it runs appended to the
  previous ``python`` block of the same file (itself perhaps a continuation), as one
  program.
- ``<!-- doctest: server -->``: ``backchannel serve`` is started first on a free port (with
  the API key and secret above), and ``127.0.0.1:8000`` / ``localhost:8000`` in the block
  are replaced by its address.
- ``<!-- doctest: synopsis -->``: a shell block of usage lines (``backchannel token --sub
  USER [--ttl SECONDS]``): each subcommand must exist and know every ``--option`` shown
  (checked against its ``--help``).
- ``<!-- doctest: browser -->``: a ``python`` block that serves a web page until it is
  stopped, beside ``backchannel serve`` (started as for ``server``, whose address
  replaces ``127.0.0.1:8000``; a free port replaces ``8080``). It must print its page's
  URL first; the page, opened in Chromium (as in tests/app/test_browser.py), must say
  ``subscribed`` once it follows the channel it subscribes to, and then show the JSON of
  what the HTTP API publishes there, with no error on the page or its console.

The directory also holds ``.venv``: the virtual environment the tests run in, as a
checkout has it after ``make serve``.

docs/README.md says the same for those who write the docs. Blocks of files being rewritten
elsewhere that fail today are in ``PENDING``, expected to fail (strictly: once one runs,
its entry must go).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from backchannel.app.config import Config, load_config
from backchannel.hub import ChannelOptions, HubOptions

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60.0
MAX_SKIPS = 3
SECRET = "the docs' tests' secret, at least 32 bytes long"
API_KEY = "docs-test-api-key"
SHELLS = {"sh", "shell", "bash", "console"}
BIN = Path(sys.executable).parent

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
DIRECTIVE = re.compile(r"<!--\s*doctest:\s*(?P<text>.*?)\s*-->")
SKIP = re.compile(r"skip\s*\((?P<reason>.*\S.*)\)")
CONTINUES = "continues the previous block"
KINDS = ("skip (REASON)", CONTINUES, "server", "synopsis", "browser")
#: Where ``make serve`` listens: an example that takes this port fails while it runs.
MAKE_SERVE_PORT = 8000

# Blocks known to fail while their page is being rewritten: (file, a line of the block,
# stripped) -> (why, run). Expected to fail, strictly; run is False where the block would
# only hit the timeout. Empty: every example runs.
PENDING: dict[tuple[str, str], tuple[str, bool]] = {}

# Chromium for the "browser" blocks, as tests/app/test_browser.py runs it: Debian's, headless
# and quiet (no GPU here; no background calls to Google's hosts on a closed network).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository, with /
    line: int  # of the opening fence, from 1
    lang: str
    source: str
    directive: str | None
    previous: Block | None  # the previous python block of the same file

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def commands(self) -> list[str]:
        """The shell command lines (``$ `` lines of a console block)."""
        lines = self.source.splitlines()
        if self.lang == "console":
            return [line[2:] for line in lines if line.startswith("$ ")]
        return lines

    def program(self) -> str:
        """The source to run: with the blocks it continues, for a fragment."""
        if self.directive != CONTINUES:
            return self.source
        if self.previous is None:
            pytest.fail(f"{self.id}: '{CONTINUES}', but no python block comes before it")
        return self.previous.program() + "\n" + self.source

    def skip_reason(self) -> str | None:
        match = SKIP.fullmatch(self.directive or "")
        return match["reason"] if match else None


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse(path: Path) -> list[Block]:
    """The fenced blocks of one file that are examples (see the module's docstring)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    relative = path.relative_to(ROOT).as_posix()
    blocks: list[Block] = []
    previous_python: Block | None = None
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence, lang = opening["indent"], opening["fence"], opening["lang"].lower()
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        directive = None
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k >= 0 and (comment := DIRECTIVE.fullmatch(lines[k].strip())):
            directive = comment["text"]
        block = Block(relative, i + 1, lang, "\n".join(body) + "\n", directive, previous_python)
        if lang == "python":
            blocks.append(block)
            previous_python = block
        elif lang in SHELLS and (
            directive is not None
            or any(re.match(r"(backchannel|curl)(\s|$)", line) for line in block.commands)
        ):
            blocks.append(block)
        i = j + 1
    return blocks


def collect() -> list[Block]:
    return [block for path in markdown_files() for block in parse(path)]


BLOCKS = collect()


def pending(block: Block) -> tuple[str, bool] | None:
    for (path, line), why in PENDING.items():
        if block.path == path and line in (text.strip() for text in block.source.splitlines()):
            return why
    return None


def params() -> list[object]:
    out: list[object] = []
    for block in BLOCKS:
        why = pending(block)
        marks = [] if why is None else [pytest.mark.xfail(strict=True, reason=why[0], run=why[1])]
        out.append(pytest.param(block, id=block.id, marks=marks))
    return out


# The collector itself: it must find the blocks (a broken one must not pass silently).


def test_every_python_block_is_collected() -> None:
    fences = {
        f"{path.relative_to(ROOT).as_posix()}:{n}"
        for path in markdown_files()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.fullmatch(r"\s*```python\s*", line)
    }
    assert fences, "no ```python block found in README.md and docs/"
    assert {block.id for block in BLOCKS if block.lang == "python"} == fences
    assert any(block.path == "README.md" for block in BLOCKS)


def test_every_directive_is_known_and_on_a_block() -> None:
    found = [
        (f"{path.relative_to(ROOT).as_posix()}:{n}", comment["text"])
        for path in markdown_files()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if (comment := DIRECTIVE.fullmatch(line.strip()))
    ]
    unknown = [
        (where, text) for where, text in found if not (SKIP.fullmatch(text) or text in KINDS[1:])
    ]
    assert not unknown, f"unknown doctest directives (known: {', '.join(KINDS)}): {unknown}"
    attached = [block for block in BLOCKS if block.directive is not None]
    assert len(attached) == len(found), (
        "a doctest directive must be the last non-blank line before a collected block: "
        f"{[where for where, _ in found]} vs {[block.id for block in attached]}"
    )


def test_skips_are_few_and_explained() -> None:
    skipped = [f"{block.id} ({block.skip_reason()})" for block in BLOCKS if block.skip_reason()]
    assert len(skipped) <= MAX_SKIPS, "too many skipped examples:\n" + "\n".join(skipped)


def test_no_example_takes_the_port_of_make_serve() -> None:
    """The quickstart runs ``make serve`` on port 8000, and a reader runs the examples
    beside it: one that listens there too fails (an example's own server: port 0)."""
    taken = [
        block.id
        for block in BLOCKS
        if block.directive is None and re.search(rf"\b{MAKE_SERVE_PORT}\b", block.source)
    ]
    assert not taken, f"examples on port {MAKE_SERVE_PORT}, which make serve holds: {taken}"


def test_the_config_page_gives_every_setting_with_its_default(tmp_path: Path) -> None:
    """docs/config.md's file "with every key, with its default" is the code's: it loads,
    it names every setting of each section and of the hub, and each value is the
    default (the ``[channels.chat]`` table is an example namespace: every key, any value).
    """
    page = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    found = re.search(r"## The file\n.*?```toml\n(?P<toml>.*?)```", page, re.S)
    assert found, "docs/config.md has no toml block under '## The file'"
    data = tomllib.loads(found["toml"])
    defaults = Config()
    for section in ("server", "auth", "api", "longpoll", "broker"):
        expected = dataclasses.asdict(getattr(defaults, section))
        assert data[section] == expected, f"[{section}] in docs/config.md"
    hub = {field.name: field.default for field in dataclasses.fields(HubOptions)}
    for name in ("namespaces", "default", "anonymous"):  # [channels.*], [auth]
        del hub[name]
    assert data["hub"] == hub, "[hub] in docs/config.md"
    channel = {field.name for field in dataclasses.fields(ChannelOptions)}
    assert set(data["channels"]["chat"]) == channel, "[channels.chat] in docs/config.md"
    # And the server takes the file as it is.
    (tmp_path / "backchannel.toml").write_text(found["toml"], encoding="utf-8")
    loaded = load_config(tmp_path / "backchannel.toml", {})
    assert loaded.server == defaults.server and loaded.hub_options().max_channels == 128


def heading_anchors(path: Path) -> set[str]:
    """The anchors a Markdown renderer makes of a file's headings (as GitHub does:
    lower case, punctuation dropped, spaces to hyphens)."""
    headings = re.findall(r"^#+\s+(.*?)\s*$", path.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_leads_somewhere() -> None:
    """A reader who follows a link between the pages (or to a file of the checkout)
    lands on it, and on the heading it names."""
    broken = []
    for path in markdown_files():
        prose = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", link):
                continue
            file, _, anchor = link.partition("#")
            target = (path.parent / file).resolve() if file else path
            if not target.exists():
                broken.append(f"{path.relative_to(ROOT)}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target):
                broken.append(f"{path.relative_to(ROOT)}: {link} (no such heading)")
    assert not broken, "\n".join(broken)


def test_pending_entries_name_blocks() -> None:
    stale = [key for key in PENDING if not any(pending(b) == PENDING[key] for b in BLOCKS)]
    assert not stale, f"PENDING entries that match no block any more (remove them): {stale}"


# The examples.


@pytest.fixture(scope="session")
def example_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("doc-files")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(folder / "cert.pem", append=i > 0)
    cert.private_key_pem.write_to_path(folder / "key.pem")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / "jwt.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return folder


def environment() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("BACKCHANNEL_") or name == "BACKCHANNEL_NO_EXTENSIONS"
    }
    env.update(
        BACKCHANNEL_AUTH_SECRET=SECRET,
        BACKCHANNEL_API_KEY=API_KEY,
        NO_PROXY="*",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


@pytest.fixture
def workdir(tmp_path: Path, example_files: Path) -> Path:
    for file in example_files.iterdir():
        shutil.copy(file, tmp_path / file.name)
    # The README's ". .venv/bin/activate": the environment these tests run in.
    if (Path(sys.prefix) / "bin" / "activate").exists():
        (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return tmp_path


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``backchannel serve`` on a free port: its ``host:port``."""
    with subprocess.Popen(
        # Warnings only: its standard error is read at the end, and an access log line
        # per request could fill the pipe and block the server before that.
        [
            BIN / "backchannel",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    ) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            match = re.search(r"//(127\.0\.0\.1:\d+)/", banner)
            assert match, f"no address in the server's first line: {banner!r}"
            yield match[1]
        finally:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=15)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            args,
            cwd=cwd,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"did not end within {TIMEOUT} s; stderr:\n{exc.stderr!r}")


def check_outputs(block: Block, stdout: str) -> None:
    """Expected JSON outputs (``# {...}`` comments) against the JSON lines printed."""
    expected = []
    for line in block.commands:
        if re.match(r"#\s*[\[{]", line):
            try:
                expected.append(json.loads(line.lstrip("# ")))
            except ValueError:
                continue
    if not expected:
        return
    printed = []
    for line in stdout.splitlines():
        try:
            printed.append(json.loads(line))
        except ValueError:
            continue
    shape = [sorted(v) if isinstance(v, dict) else type(v).__name__ for v in expected]
    got = [sorted(v) if isinstance(v, dict) else type(v).__name__ for v in printed]
    assert got == shape, f"expected outputs shaped {shape}, printed:\n{stdout}"


def check_synopsis(block: Block, cwd: Path) -> None:
    for line in block.commands:
        words = line.split()
        if not words or words[0] != "backchannel":
            continue
        assert len(words) > 1, f"no subcommand in {line!r}"
        result = run([str(BIN / "backchannel"), words[1], "--help"], cwd)
        assert result.returncode == 0, f"backchannel {words[1]} --help: {result.stderr}"
        unknown = [
            option
            for option in re.findall(r"(?<![\w-])--[\w-]+", line)
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result.stdout)
        ]
        assert not unknown, f"backchannel {words[1]} has no {unknown}:\n{result.stdout}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def api_publish(address: str, channel: str, data: object) -> None:
    """What a backend does: POST /api/publish (no proxy, whatever the environment says)."""
    body = json.dumps({"channel": channel, "data": data}).encode()
    request = urllib.request.Request(
        f"http://{address}/api/publish",
        body,
        {"Authorization": f"apikey {API_KEY}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=TIMEOUT) as reply:
        assert reply.status == 200, reply.read()


def console_error(message: Any, errors: list[str]) -> None:
    """Collect the page's console errors, but Chromium's own ask for a /favicon.ico that
    the example's site has no reason to serve."""
    if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
        errors.append(f"{message.text} ({message.location.get('url')})")


def check_page(block: Block, workdir: Path, address: str) -> None:
    """A ``browser`` block: its site beside the server, its page in Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - only without the test extra
        sync_playwright = None
    if (sync_playwright is None or not Path(CHROMIUM).exists()) and os.environ.get("CI") != "true":
        pytest.skip("needs playwright and chromium (make test installs both)")
    assert sync_playwright is not None, "playwright is missing"
    channels = re.findall(r"""subscribe\(\s*["']([^"']+)["']""", block.source)
    assert len(channels) == 1, f"a browser block subscribes to one channel: {channels}"
    source = re.sub(r"\b(127\.0\.0\.1|localhost):8000\b", address, block.source)
    source = re.sub(r"\b8080\b", str(free_port()), source)
    (workdir / "site.py").write_text(source, encoding="utf-8")
    with subprocess.Popen(
        [sys.executable, "-u", "-W", "error", "site.py"],
        cwd=workdir,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as site:
        try:
            assert site.stdout is not None
            ready, _, _ = select.select([site.stdout], [], [], TIMEOUT)
            first = site.stdout.readline() if ready else ""
            url = re.search(r"https?://\S+?/", first)
            assert url, f"the site printed no URL first: {first!r}"
            with sync_playwright() as playwright:
                chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = chromium.new_page()
                    errors: list[str] = []
                    page.on("pageerror", lambda error: errors.append(str(error)))
                    page.on("console", lambda message: console_error(message, errors))
                    page.goto(url[0])
                    wait_for_text(page, "subscribed", errors)
                    data = {"doctest": "published through the HTTP API"}
                    api_publish(address, channels[0], data)
                    wait_for_text(page, json.dumps(data, separators=(",", ":")), errors)
                    assert not errors, errors
                finally:
                    chromium.close()
        finally:
            site.terminate()
            _, stderr = site.communicate(timeout=15)
        assert "Traceback" not in stderr, stderr


def wait_for_text(page: Any, text: str, errors: list[str]) -> None:
    """Wait until the page's text holds ``text``; on a timeout, say what the page said."""
    try:
        page.wait_for_function(
            "(text) => document.body.innerText.includes(text)", arg=text, timeout=WAIT_MS
        )
    except Exception as exc:  # playwright's TimeoutError, imported only when installed
        body = page.inner_text("body")
        pytest.fail(f"the page never showed {text!r}: {exc}\npage: {body!r}\nerrors: {errors}")


@pytest.mark.parametrize("block", params())
def test_example(block: Block, workdir: Path, request: pytest.FixtureRequest) -> None:
    if (reason := block.skip_reason()) is not None:
        pytest.skip(reason)
    if block.directive is not None and not (block.skip_reason() or block.directive in KINDS[1:]):
        pytest.fail(f"unknown directive {block.directive!r}; known: {', '.join(KINDS)}")
    if block.directive == "synopsis":
        check_synopsis(block, workdir)
        return
    if block.directive == "browser":
        check_page(block, workdir, request.getfixturevalue("server"))
        return
    source = block.program() if block.lang == "python" else "\n".join(block.commands) + "\n"
    if block.directive == "server":
        address = request.getfixturevalue("server")
        source = re.sub(r"\b(127\.0\.0\.1|localhost):8000\b", address, source)
    if block.lang == "python":
        (workdir / "example.py").write_text(source, encoding="utf-8")
        result = run([sys.executable, "-W", "error", "example.py"], workdir)
        assert result.returncode == 0, f"exit {result.returncode}; stderr:\n{result.stderr}"
        assert not result.stderr, f"exit 0, but stderr:\n{result.stderr}"
    else:
        result = run(["sh", "-e", "-c", source], workdir)
        assert result.returncode == 0, (
            f"exit {result.returncode}; stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
        check_outputs(block, result.stdout)
