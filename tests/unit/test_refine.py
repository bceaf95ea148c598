"""Prompt refinement (``clusterkit.refine``): the template refiner, an external command (real
scripts in subprocesses), an OpenAI-compatible endpoint (a real ``http.server`` on 127.0.0.1), the
config file, and ``submit infer --refine`` (single run and sweep): both prompts recorded, refined
once, and the API key nowhere in the run folder, the output or an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clusterkit.errors import InvalidChoice, RefineError, UserError
from clusterkit.project import Project
from clusterkit.refine import RefineConfig, build_refiner, find_refine_config, load_refine_config, refine_prompts
from clusterkit.refine.chat import HttpRefiner
from clusterkit.refine.command import CommandRefiner
from clusterkit.refine.template import DEFAULT_SYSTEM_PROMPT, PromptTemplate, TemplateRefiner
from clusterkit.submit import submit_infer
from clusterkit.sweep import submit_sweep
from opensora_core.inference import records
from opensora_core.inference.request import InferRequest

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-7f3a9c2e1b5d4f6a8e0c"  # a fake key; every test below looks for it where it must not be
SPACE_WATER = "A cup of water is slowly poured out in the space station, releasing the liquid into the surrounding area"
TINY = dict(model="tiny", frames="1", resolution="144p", executor="local")


@pytest.fixture()
def project(tmp_path):
    return Project.from_options(str(ROOT / "nodes.yaml"), {"CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs")})


# ------------------------------------------------------------------------------------------- template


def test_template_keeps_the_prompt_and_fills_every_part_deterministically():
    refiner = TemplateRefiner()
    refined = refiner.refine(SPACE_WATER)
    assert refined == refiner.refine(SPACE_WATER) == TemplateRefiner().refine(f"  {SPACE_WATER}. ")
    assert refined.startswith(SPACE_WATER + ". ")  # the user's text first, word for word
    for words in ("close-up shot", "camera is steady", "background is slightly out of focus", "lighting is soft",
                  "no additional objects or text"):
        assert words in refined  # shot, camera, setting, lighting, what is absent
    assert refined.count(".") == 6 and "\n" not in refined


@pytest.mark.parametrize("prompt", ["the camera pans left across a harbour", "a slow zoom in on a flower",
                                    "tracking a cyclist through a forest", "a drone orbits a lighthouse"])
def test_template_leaves_the_camera_to_a_prompt_that_moves_it(prompt):
    refined = TemplateRefiner().refine(prompt)
    assert "steady" not in refined and "background is slightly out of focus" in refined


def test_template_leaves_the_camera_to_camera_motion():
    assert "camera is steady" in TemplateRefiner().refine("a dog runs on the beach")
    moving = TemplateRefiner(camera_motion="pan left").refine("a dog runs on the beach")
    assert "steady" not in moving and "close-up shot" in moving and "lighting is soft" in moving


@pytest.mark.parametrize("prompt", ["a red car at night", "a neon-lit street in the rain", "a neon sign in an alley",
                                    "a beach at sunset", "a dark forest", "a city skyline at dusk",
                                    "a lighthouse in a storm"])
def test_template_never_gives_a_night_or_sunset_scene_soft_natural_light(prompt):
    refined = TemplateRefiner().refine(prompt)
    assert "soft and natural" not in refined and "calm atmosphere" not in refined
    assert refined == TemplateRefiner().refine(prompt) and "no additional objects" in refined


def test_template_leaves_out_the_parts_the_prompt_already_covers():
    refined = TemplateRefiner().refine("An aerial view of a bird over a lake, lit by the low sun")
    assert "close-up" not in refined and "lighting is soft" not in refined
    assert "background" in refined and "no additional objects" in refined
    assert "light" in TemplateRefiner().refine("a cat leaps lightly onto a sofa")  # 'lightly' is not lighting
    assert "lighting is soft" in TemplateRefiner().refine("a cat leaps lightly onto a sofa")  # the part is kept


def test_a_part_that_carries_the_prompt_is_never_left_out(tmp_path):
    path = tmp_path / "refine.yaml"  # the user's text only in the shot part, which close-ups "cover"
    path.write_text('refine:\n  template:\n    subject: null\n    shot: "A shot of {subject}"\n')
    refined = build_refiner("template", load_refine_config(path), {}).refine("a close-up of a cat licking its paw")
    assert "a close-up of a cat licking its paw" in refined
    path.write_text('refine:\n  template:\n    subject: "{prompt}, {{as typed}}"\n')  # doubled braces: literal
    assert build_refiner("template", load_refine_config(path), {}).refine("a cat").startswith("A cat, {as typed}.")


def test_template_from_config_overrides_and_removes_parts(tmp_path):
    path = tmp_path / "refine.yaml"
    path.write_text('refine:\n  template:\n    subject: "A medium shot of {subject}"\n    lighting: '
                    '"The lighting is warm late-afternoon sunlight"\n    absence: null\n')
    config = load_refine_config(path)
    refined = build_refiner("template", config, {}).refine("A dog runs on the beach")
    assert refined.startswith("A medium shot of a dog runs on the beach. ")
    assert "warm late-afternoon sunlight" in refined and "no additional" not in refined


@pytest.mark.parametrize("yaml_text, words", [
    ('refine:\n  template:\n    lighting: "at {time}"\n', "unknown placeholder {time}; valid placeholders: "
                                                          "{prompt}, {subject}"),
    ('refine:\n  template:\n    lighting: "at {}"\n', "unknown placeholder {}"),
    ('refine:\n  template:\n    lighting: "at {prompt.upper}"\n', "unknown placeholder {prompt.upper}"),
    ('refine:\n  template:\n    lighting: "at {prompt!r}"\n', "placeholder {prompt} takes no format spec"),
    ('refine:\n  template:\n    lighting: "at {prompt:>10}"\n', "placeholder {prompt} takes no format spec"),
    ('refine:\n  template:\n    lighting: "at {prompt"\n', "template part 'lighting'"),
    ('refine:\n  http:\n    timeout_s: .inf\n', "http.timeout_s inf must be a number of seconds above 0"),
    ('refine:\n  command:\n    argv: [x]\n    timeout_s: 1.0e+300\n', "at most 3600"),
    ('refine:\n  template:\n    mood: "calm"\n', "unknown template keys ['mood']; valid keys: subject"),
    ('refine:\n  template:\n    subject: "a fixed text"\n', "never uses {prompt} or {subject}"),
    ('refine:\n  command:\n    argv: "python3 refine.py --x"\n', "must be a list of arguments, not a shell string"),
    ('refine:\n  http:\n    api_key: ' + KEY + '\n', "http.api_key: never write a key in the config file"),
    ('refine:\n  http:\n    api_key_env: ' + KEY + '\n', "must be the NAME of an environment variable"),
    ('refine:\n  http:\n    url: "ftp://example.org/x"\n', "must be an http:// or https:// URL"),
    ('refine:\n  bogus: 1\n', "unknown refine keys ['bogus']; valid keys: template, command, http"),
])
def test_bad_config_is_a_clear_error_that_never_echoes_a_key(tmp_path, yaml_text, words):
    path = tmp_path / "refine.yaml"
    path.write_text(yaml_text)
    with pytest.raises(UserError) as info:
        load_refine_config(path)
    assert words in info.value.message and str(path) in info.value.message
    assert KEY not in info.value.message + (info.value.hint or "")


def test_config_file_lookup(tmp_path):
    assert find_refine_config(tmp_path).source == "built-in defaults"  # no env/refine.yaml: defaults
    assert find_refine_config(ROOT / "env").http.api_key_env == "OPENAI_API_KEY"  # the shipped file parses
    with pytest.raises(UserError, match="does not exist"):
        find_refine_config(tmp_path, tmp_path / "missing.yaml")
    with pytest.raises(InvalidChoice, match="valid choices: none, template, command, http"):
        build_refiner("gpt", RefineConfig(), {})


# -------------------------------------------------------------------------------------------- command


def write_script(folder: Path, body: str) -> Path:
    path = folder / "refiner.py"
    path.write_text("import sys, time\nprompt = sys.stdin.read()\n" + body)
    return path


def command_config(folder: Path, body: str, timeout_s: float = 20) -> RefineConfig:
    write_script(folder, body)
    path = folder / "refine.yaml"  # argv relative to the config's folder; a secret-looking argument
    path.write_text(f"refine:\n  command:\n    argv: [{json.dumps(sys.executable)}, refiner.py, --token, {KEY}]\n"
                    f"    timeout_s: {timeout_s}\n")
    return load_refine_config(path)


def test_command_refiner_runs_the_program_with_the_prompt_on_stdin(tmp_path):
    config = command_config(tmp_path, "print('Refined:', prompt.upper(), '|', sys.argv[1:])\n")
    refiner = build_refiner("command", config, {"PATH": os.environ["PATH"], "OPENAI_API_KEY": KEY})
    hostile = "a cat; rm -rf / $(whoami) `id` \"quoted\" 'single'\nsecond line ünïcode"
    refined = refiner.refine(hostile)
    assert refined == f"Refined: {hostile.upper()} | ['--token', '{KEY}']".replace("\n", " ")  # never via a shell
    assert KEY not in refiner.describe() and sys.executable in refiner.describe()
    assert KEY not in repr(refiner) and KEY not in str(refiner)  # neither the environment nor the argv


def test_no_refiner_repr_holds_a_key(tmp_path):
    environ = {"OPENAI_API_KEY": KEY, "REFINE_TEST_KEY": KEY, "PATH": os.environ["PATH"]}
    url = f"https://llm.example.org/v1/chat/completions?token={KEY}"
    path = tmp_path / "refine.yaml"
    path.write_text(f"refine:\n  command:\n    argv: [refine, --token, {KEY}]\n  http:\n    url: {json.dumps(url)}\n"
                    "    api_key_env: REFINE_TEST_KEY\n")
    config = load_refine_config(path)
    for method in ("template", "command", "http"):
        refiner = build_refiner(method, config, environ)
        assert KEY not in repr(refiner) and KEY not in str(refiner) and KEY not in refiner.describe(), method


@pytest.mark.parametrize("body, words", [
    ("sys.stderr.write('model overloaded\\n'); sys.exit(3)", "exited with code 3: model overloaded"),
    ("pass", "printed no refined prompt"),
    ("print('   ')", "printed no refined prompt"),
])
def test_command_failures_name_the_program_not_its_arguments(tmp_path, body, words):
    refiner = build_refiner("command", command_config(tmp_path, body), dict(os.environ))
    with pytest.raises(RefineError) as info:
        refine_prompts(["a cat", "a dog"], refiner)
    message = info.value.message
    assert message.startswith(f"prompt 0: refine command {sys.executable!r}") and words in message
    assert KEY not in message


def test_command_timeout_stops_it_and_says_so(tmp_path):
    refiner = build_refiner("command", command_config(tmp_path, "time.sleep(30)", timeout_s=0.5), dict(os.environ))
    with pytest.raises(RefineError, match="did not answer within 0.5 s \\(it was stopped\\)") as info:
        refiner.refine("a cat")
    assert "command.timeout_s" in info.value.hint


def test_missing_command_and_missing_config():
    with pytest.raises(RefineError, match="'no-such-refiner-xyz' not found"):
        CommandRefiner(("no-such-refiner-xyz",), 5, dict(os.environ)).refine("a cat")
    with pytest.raises(UserError, match="--refine command: no command configured in built-in defaults"):
        build_refiner("command", RefineConfig(), {})


def test_refine_prompts_refines_each_distinct_prompt_once_and_keeps_loop_segments(tmp_path):
    counter = tmp_path / "calls"
    config = command_config(tmp_path, f"open({str(counter)!r}, 'a').write('x')\nprint('R', prompt.strip())\n")
    refiner = build_refiner("command", config, dict(os.environ))
    done = refine_prompts(["a cat", "a dog", "a cat", "|0|a red car|2|a blue car"], refiner)
    assert done.prompts == ("R a cat", "R a dog", "R a cat", "|0|R a red car|2|R a blue car")
    assert counter.read_text() == "xxxx" and done.refiner == "command"
    request = InferRequest(prompts=("|0|a red car|2|a blue car",), frames="2s", resolution="144p", model="tiny",
                           loop=3, refined_prompts=(done.prompts[3],), refiner="command")
    assert request.encoder_prompt(0) == "|0|R a red car|2|R a blue car"
    with pytest.raises(UserError, match="must keep the loop segments of its original"):
        InferRequest(prompts=("|0|a red car|2|a blue car",), frames="2s", resolution="144p", model="tiny", loop=3,
                     refined_prompts=("a red car then a blue car",), refiner="command")


# ----------------------------------------------------------------------------------------------- http


class ChatServer:
    """A real OpenAI-style chat-completions server on 127.0.0.1; each path answers differently."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                prompt = body["messages"][-1]["content"]
                if self.path == "/v1/chat/completions":
                    self._send(200, {"choices": [{"message": {"role": "assistant",
                                                              "content": f"A detailed shot of {prompt}.\n"}}]})
                elif self.path == "/fail":  # some servers echo what they got, the key included
                    echoed = f"Incorrect API key provided: {self.headers.get('Authorization')}"
                    self._send(401, {"error": {"message": echoed}})
                elif self.path == "/bad-json":
                    self._send(200, b"<html>gateway says hi</html>")
                elif self.path == "/no-choices":
                    self._send(200, {"id": "x", "choices": []})
                elif self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{server.port}/v1/chat/completions?token=abc")
                    self.end_headers()

            def _send(self, code, payload):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str = "/v1/chat/completions") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture()
def chat():
    server = ChatServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def http_config(folder: Path, url: str, key_env: str = "REFINE_TEST_KEY") -> Path:
    path = folder / "refine.yaml"
    path.write_text(f"refine:\n  http:\n    url: {url}\n    model: tiny-llm\n    api_key_env: {key_env}\n"
                    "    timeout_s: 10\n")
    return path


def test_http_refiner_posts_a_chat_completion_with_the_key_from_the_environment(chat, tmp_path):
    refiner = build_refiner("http", load_refine_config(http_config(tmp_path, chat.url())), {"REFINE_TEST_KEY": KEY})
    assert refiner.refine("a cat") == "A detailed shot of a cat."
    [seen] = chat.seen
    assert seen["auth"] == f"Bearer {KEY}"
    assert seen["body"]["model"] == "tiny-llm" and seen["body"]["temperature"] == 0
    assert seen["body"]["messages"] == [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                        {"role": "user", "content": "a cat"}]
    assert KEY not in repr(refiner) and KEY not in refiner.describe()
    assert refiner.describe() == f"http tiny-llm at {chat.url()}"


@pytest.mark.parametrize("path, words", [
    ("/fail", "answered HTTP 401: Incorrect API key provided: Bearer ***"),
    ("/bad-json", "did not answer with a chat completion (choices[0].message.content): '<html>gateway says hi"),
    ("/no-choices", "did not answer with a chat completion"),
    ("/redirect", "answered HTTP 302: a redirect to http://127.0.0.1:"),
])
def test_http_errors_name_the_endpoint_and_never_show_the_key(chat, tmp_path, path, words):
    refiner = build_refiner("http", load_refine_config(http_config(tmp_path, chat.url(path))), {"REFINE_TEST_KEY": KEY})
    with pytest.raises(RefineError) as info:
        refine_prompts(["a cat"], refiner)
    text = info.value.message + (info.value.hint or "")
    assert info.value.message.startswith(f"prompt 0: refine endpoint {chat.url(path)} (model tiny-llm)")
    assert words in text and KEY not in text and "token=abc" not in text
    assert [s["path"] for s in chat.seen] == [path]  # a redirect is not followed: the key goes nowhere else


def test_http_missing_key_variable_names_it_and_nothing_is_sent(chat, tmp_path):
    config = load_refine_config(http_config(tmp_path, chat.url(), key_env="MY_LLM_KEY"))
    with pytest.raises(UserError) as info:
        build_refiner("http", config, {"REFINE_TEST_KEY": KEY})
    assert "reads the API key from $MY_LLM_KEY" in info.value.message and "not set" in info.value.message
    assert "export MY_LLM_KEY=" in info.value.hint and chat.seen == []


def test_a_malformed_key_or_url_is_a_clear_error_that_never_shows_the_key(chat, tmp_path):
    config = load_refine_config(http_config(tmp_path, chat.url()))
    with pytest.raises(UserError) as info:  # a pasted newline: urllib would refuse the header, quoting it
        build_refiner("http", config, {"REFINE_TEST_KEY": KEY + "\r"})
    text = info.value.message + (info.value.hint or "")
    assert "$REFINE_TEST_KEY holds whitespace or control characters" in text and KEY not in text
    refiner = HttpRefiner("http://127.0.0.1:abc/v1", "m", "sys", 5, 0.0, KEY)  # urllib: InvalidURL (a ValueError)
    with pytest.raises(RefineError, match="cannot send to refine endpoint") as info:
        refiner.refine("a cat")
    assert KEY not in info.value.message and chat.seen == []


def test_http_unreachable_and_timeout(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refiner = HttpRefiner(f"http://127.0.0.1:{port}/v1/chat/completions", "m", "sys", 5, 0.0, KEY)
    with pytest.raises(RefineError, match="cannot reach refine endpoint") as info:
        refiner.refine("a cat")
    assert KEY not in info.value.message
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        slow = HttpRefiner(f"http://127.0.0.1:{silent.getsockname()[1]}/v1", "m", "sys", 0.5, 0.0, KEY)
        with pytest.raises(RefineError, match="did not answer within 0.5 s"):
            slow.refine("a cat")


# ------------------------------------------------------------------------------------ submit --refine


class FakeExecutor:
    """Accepts every job (keeping the prompts.json it got) and says it completed: the submit logic is
    under test here, not the job (tests/integration/test_refine_local.py runs the real one)."""

    def __init__(self) -> None:
        self.requests = []

    def submit(self, spec, paths):
        self.requests.append(json.loads((paths.root / "prompts.json").read_text()))
        return [f"fake-{len(self.requests)}"]

    def states(self, runs):
        return {record.run_id: "COMPLETED" for record, _ in runs}


@pytest.fixture()
def fake(monkeypatch):
    from clusterkit.launch import runs

    executor = FakeExecutor()
    monkeypatch.setattr(runs, "get_executor", lambda name: executor)
    return executor


def all_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.rglob("*")) if p.is_file())


def test_submit_refines_once_on_the_submit_host_and_records_both_prompts(project, chat, tmp_path, fake):
    config = http_config(tmp_path, chat.url())
    result = submit_infer(project, **TINY, prompts=("a cat", "a dog"), refine="http", refine_config=str(config),
                          environ={"REFINE_TEST_KEY": KEY})
    run_dir = Path(result["run_dir"])
    prompts = json.loads((run_dir / "prompts.json").read_text())
    assert prompts == [{"prompt": "a cat", "refined_prompt": "A detailed shot of a cat."},
                       {"prompt": "a dog", "refined_prompt": "A detailed shot of a dog."}]
    settings = json.loads((run_dir / "request.json").read_text())
    assert settings["refiner"] == "http" and "refined_prompts" not in settings
    request = InferRequest.load(run_dir / "request.json", run_dir / "prompts.json")
    assert request.refined_prompts == ("A detailed shot of a cat.", "A detailed shot of a dog.")
    assert [v.seed for v in request.videos()] == [  # the seeds of the prompts as given
        v.seed for v in InferRequest(prompts=("a cat", "a dog"), frames="1", resolution="144p").videos()]
    assert result["refine"]["via"] == f"http tiny-llm at {chat.url()}" and len(chat.seen) == 2
    assert len(fake.requests) == 1 and len(list(run_dir.rglob("*.json"))) >= 3  # written, and searched below
    assert KEY not in json.dumps(result) and KEY not in all_text(run_dir)


def test_refine_errors_come_before_anything_is_written(project, chat, tmp_path):
    config = http_config(tmp_path, chat.url("/fail"))
    with pytest.raises(RefineError, match="answered HTTP 401"):
        submit_infer(project, **TINY, prompts=("a cat",), refine="http", refine_config=str(config),
                     environ={"REFINE_TEST_KEY": KEY})
    with pytest.raises(UserError, match="REFINE_TEST_KEY"):
        submit_infer(project, **TINY, prompts=("a cat",), refine="http", refine_config=str(config), environ={})
    with pytest.raises(UserError, match="--res"):  # bad input: found before any refiner call
        submit_infer(project, **{**TINY, "resolution": "999p"}, prompts=("a cat",), refine="http",
                     refine_config=str(config), environ={"REFINE_TEST_KEY": KEY})
    assert len(chat.seen) == 1 and not project.runs_dir.exists()


def test_sweep_refines_before_the_split_and_a_resumed_sweep_reuses_the_refined_prompts(project, tmp_path, fake):
    counter = tmp_path / "calls"
    config = command_config(tmp_path, f"open({str(counter)!r}, 'a').write('x')\nprint('R', prompt.strip())\n")
    prompts = tuple(f"prompt {i}" for i in range(6))
    args = dict(**TINY, prompts=prompts, nodes="worker-5,worker-6", refine="command",
                refine_config=str(config.source), environ=dict(os.environ), output=str(tmp_path / "sweep"))
    first = submit_sweep(project, **args)
    assert counter.read_text() == "x" * 6 and len(fake.requests) == 2
    sent = [pair for request in fake.requests for pair in request]
    assert all(pair == {"prompt": p, "refined_prompt": f"R {p}"} for pair, p in zip(sent, prompts))
    assert first["refine"]["prompts"][5] == {"prompt": "prompt 5", "refined_prompt": "R prompt 5"}
    manifest = json.loads((tmp_path / "sweep" / records.MANIFEST).read_text())
    assert manifest["refine"]["prompts"] == [f"R {p}" for p in prompts]
    assert manifest["settings"]["refiner"] == "command"

    again = submit_sweep(project, **args)  # nothing recorded as done: every video again, same texts, no calls
    assert counter.read_text() == "x" * 6 and again["refine"]["reused"] is True
    assert [pair for request in fake.requests[2:] for pair in request] == sent
    unrefined = {k: v for k, v in args.items() if k not in ("refine", "refine_config")}
    with pytest.raises(UserError, match="made with other settings \\(refiner differ\\)"):
        submit_sweep(project, **unrefined)


def counting_config(tmp_path: Path) -> tuple[Path, RefineConfig]:
    """A command refiner that appends one 'x' to a file per call."""
    counter = tmp_path / "calls"
    config = command_config(tmp_path, f"open({str(counter)!r}, 'a').write('x')\nprint('R', prompt.strip())\n")
    return counter, config


def test_a_dry_run_calls_no_command_or_endpoint_but_still_checks_the_key(project, chat, tmp_path, fake):
    counter, config = counting_config(tmp_path)
    args = dict(**TINY, prompts=("a cat", "a dog", "a cat"), refine="command", refine_config=str(config.source),
                environ=dict(os.environ))
    dry = submit_infer(project, **args, dry_run=True)
    assert not counter.exists() and not fake.requests  # never called
    assert dry["refine"]["dry_run"] is True and dry["refine"]["via"] == f"command {sys.executable!r}"
    assert [pair["refined_prompt"] for pair in dry["refine"]["prompts"]] == [None, None, None]
    assert dry["request"]["refiner"] is None and dry["request"]["refined_prompts"] is None
    real = submit_infer(project, **args)
    assert counter.read_text() == "xx" and real["refine"]["dry_run"] is False  # each distinct prompt once
    sweep = submit_sweep(project, **{**args, "prompts": ("a cat", "a dog")}, nodes="worker-5,worker-6",
                         output=str(tmp_path / "sweep"), dry_run=True)
    assert counter.read_text() == "xx" and sweep["refine"]["dry_run"] is True and sweep["runs"]
    assert len(fake.requests) == 1 and not (tmp_path / "sweep").exists()

    (tmp_path / "http").mkdir()
    http = http_config(tmp_path / "http", chat.url())
    dry_http = submit_infer(project, **TINY, prompts=("a cat",), refine="http", refine_config=str(http),
                            environ={"REFINE_TEST_KEY": KEY}, dry_run=True)
    assert chat.seen == [] and dry_http["refine"]["via"] == f"http tiny-llm at {chat.url()}"
    with pytest.raises(UserError, match="REFINE_TEST_KEY"):  # the key is still checked
        submit_infer(project, **TINY, prompts=("a cat",), refine="http", refine_config=str(http), environ={},
                     dry_run=True)
    template = submit_infer(project, **TINY, prompts=("a cat",), refine="template", dry_run=True)
    assert template["refine"]["prompts"][0]["refined_prompt"].startswith("A cat. The video is a close-up shot")


def test_camera_motion_reaches_the_template_refiner(project, fake):
    result = submit_infer(project, **TINY, prompts=("a dog runs on the beach",), refine="template",
                          camera_motion="pan left", dry_run=True)
    refined = result["refine"]["prompts"][0]["refined_prompt"]
    assert "steady" not in refined and "close-up shot" in refined


def test_other_refine_settings_make_another_sweep_and_a_reused_one_needs_no_key(project, chat, tmp_path, fake):
    prompts = ("a cat", "a dog")
    http = http_config(tmp_path, chat.url())
    args = dict(**TINY, prompts=prompts, nodes="worker-5,worker-6", refine="http", refine_config=str(http))
    first = submit_sweep(project, **args, environ={"REFINE_TEST_KEY": KEY})
    assert len(chat.seen) == 2 and first["refine"]["reused"] is False
    manifest = json.loads((Path(first["output_dir"]) / records.MANIFEST).read_text())
    assert len(manifest["settings"]["refine_settings"]) == 12 and KEY not in json.dumps(manifest)

    again = submit_sweep(project, **args, environ={})  # every text reused: nothing sent, no key needed
    assert again["sweep"] == first["sweep"] and again["refine"]["reused"] is True and len(chat.seen) == 2

    http.write_text(http.read_text().replace("model: tiny-llm", "model: other-llm"))
    other = submit_sweep(project, **args, environ={"REFINE_TEST_KEY": KEY}, dry_run=True)
    assert other["sweep"] != first["sweep"] and other["refine"]["reused"] is False  # a new sweep, a new folder
    with pytest.raises(UserError, match="REFINE_TEST_KEY"):  # this one would refine: the key is needed
        submit_sweep(project, **args, environ={}, dry_run=True)
    with pytest.raises(UserError) as info:  # the old folder: refused, saying what changed
        submit_sweep(project, **args, environ={"REFINE_TEST_KEY": KEY}, output=first["output_dir"])
    assert "(refine_settings differ)" in info.value.message
    assert f"made by http tiny-llm at {chat.url()} with other http settings" in info.value.message
    assert len(chat.seen) == 2


# ----------------------------------------------------------------------------------------------- CLI


def run_cli(tmp_path, *args, env=None):
    environ = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs"), "COLUMNS": "300", **(env or {})}
    return subprocess.run([sys.executable, "-m", "clusterkit", *args], capture_output=True, text=True,
                          env=environ, cwd=ROOT, timeout=120)


def test_cli_refine_choices_missing_key_and_the_refined_prompts_shown(tmp_path, chat):
    base = ["submit", "infer", "--model", "tiny", "--frames", "1", "--res", "144p", "--prompt", "a cat",
            "--executor", "local", "--dry-run"]
    bad = run_cli(tmp_path, *base, "--refine", "gpt4")
    assert bad.returncode == 2 and "none, template, command, http" in bad.stderr
    config = http_config(tmp_path, chat.url())
    missing = run_cli(tmp_path, *base, "--refine", "http", "--refine-config", str(config),
                      env={"REFINE_TEST_KEY": ""})
    assert missing.returncode == 2 and "$REFINE_TEST_KEY" in missing.stderr
    ok = run_cli(tmp_path, *base, "--refine", "http", "--refine-config", str(config),
                 env={"REFINE_TEST_KEY": KEY})
    assert ok.returncode == 0, ok.stderr
    assert f"would refine 1 prompt(s) with http tiny-llm at {chat.url()} (a dry run calls no refiner)" in ok.stdout
    assert KEY not in ok.stdout + ok.stderr and chat.seen == []
    shown = run_cli(tmp_path, *base, "--refine", "template")  # the template runs on a dry run too
    assert "0 prompt:  a cat" in shown.stdout and "0 refined: A cat. The video is a close-up shot" in shown.stdout
    as_json = run_cli(tmp_path, *base, "--refine", "template", "--json")
    pair = json.loads(as_json.stdout)["result"]["refine"]["prompts"][0]
    assert pair["prompt"] == "a cat" and pair["refined_prompt"].startswith("A cat. The video is a close-up shot")
