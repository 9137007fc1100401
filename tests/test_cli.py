"""The `cook` CLI as a user meets it: one clear line per problem, non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.corpus.documents import write_documents

pytestmark = pytest.mark.timeout(600)


def _one_line_error(proc, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    docs = [{"id": str(i), "source": "t", "url": "", "title": "", "text": f"Document {i}. " + "The quick brown fox jumps over the lazy dog. " * 40,
             "fetched_at": None} for i in range(30)]
    write_documents(d / "docs.parquet", docs)
    return d / "docs.parquet"


def test_every_command_has_help(cook):
    for cmd in ([], ["tokenize"], ["train"], ["sample"], ["demo"]):
        proc = cook([*cmd, "--help"])
        assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr


def test_bad_tokenize_inputs(cook, corpus, tmp_path):
    out = tmp_path / "tok"
    _one_line_error(cook(["tokenize", corpus, "--encoding", "nope", "--out", out]), "unknown encoding")
    _one_line_error(cook(["tokenize", tmp_path / "missing.parquet", "--out", out]), "missing.parquet")
    _one_line_error(cook(["tokenize", corpus, "--encoding", "bpe:70000", "--dtype", "uint16", "--out", out]), "uint16")
    empty = tmp_path / "empty.parquet"
    write_documents(empty, [{"id": "1", "source": "t", "url": "", "title": "", "text": "", "fetched_at": None}])
    _one_line_error(cook(["tokenize", empty, "--out", out]), "empty corpus")
    assert not out.exists(), "nothing half-written"


def test_debug_shows_the_traceback(cook, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = cook(["tokenize", empty, "--out", tmp_path / "tok", "--debug"])
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "empty corpus" in proc.stderr


def test_failure_inside_a_flow_is_one_line(cook, corpus, tmp_path):
    """A problem found by a task mid-flow: one line, no traceback, no Prefect failure chatter."""
    from tasks.corpus.tokenize import tokenize_corpus

    data = tokenize_corpus([corpus], "char", tmp_path / "tok")
    shard = data / "train_000000.bin"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    proc = cook(["train", "--data", data, "--run", tmp_path / "run", "--chunks", 1, "--iters-per-chunk", 5,
                 "--eval-interval", 5, "--eval-iters", 1])
    _one_line_error(proc, "truncated token shard")
    assert "Finished in state Failed" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


# --- help texts ----------------------------------------------------------------------------------------


def _commands():
    """(path, click command) for every command and subcommand of `cook`."""
    import typer.main

    from flows.cli import app

    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_help_texts_are_shown_whole_with_their_defaults():
    """Every command's --help shows each option's help text as written ("[default: ...]" included; rich markup used
    to eat it, leaving "Output folder .") and the default of each option that has one."""
    import click
    from typer.testing import CliRunner

    from flows.cli import app

    commands = _commands()
    assert {" ".join(p) for p, _ in commands} >= {"", "scrape", "scrape wikipedia", "scrape wiki-dump", "merge", "train"}
    runner = CliRunner()
    for path, cmd in commands:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        where = f"cook {' '.join(path)} --help"
        assert result.exit_code == 0 and "Usage:" in result.output, (where, result.output)
        for line in result.output.splitlines():
            assert not line.rstrip().endswith(" ."), (where, line)
        shown = " ".join(result.output.split())
        for param in cmd.params:
            if not isinstance(param, click.Option) or not param.help:
                continue
            text = " ".join(param.help.split())
            assert text in shown, (where, text)
            if param.default not in (None, [], ()) and not (param.is_flag and not param.default) and param.show_default is not False:
                assert f"{text} [default: " in shown, (where, param.opts, shown)


def test_help_of_the_real_command(cook, cook_env):
    proc = cook(["scrape", "wikipedia", "--help"], env={**cook_env, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    shown = " ".join(proc.stdout.split())
    assert "Output folder or URL (s3://...: worked on in the cache, copied there) [default: DATA_DIR/wikipedia]." in shown and "[default: the built-in ~40 topics]" in shown, proc.stdout


# --- an output folder that cannot be written -----------------------------------------------------------

# each command that writes a folder: its arguments besides that folder, and the folder's option
WRITERS = {
    "scrape wikipedia": ([], "--out"),
    "scrape britannica": ([], "--out"),
    "scrape youtube": ([], "--out"),
    "scrape wiki-dump": (["dump.xml"], "--out"),
    "unparquet": (["in.parquet"], "--out"),
    "merge": (["in.parquet"], "--out"),
    "tokenize": (["in.parquet"], "--out"),
    "train": (["--data", "tokens"], "--run"),
    "export": (["run"], "--out"),
}


def test_unwritable_out_is_refused_before_anything_runs(cook, cook_env, tmp_path):
    """A folder under a file, or in /proc (unwritable even for root, who ignores permission bits): exit 2, one line
    naming the folder, nothing written; for every command with --out (or train's --run)."""
    with_out = {" ".join(p) for p, cmd in _commands() if any(o in ("--out", "--run") for prm in cmd.params for o in prm.opts)}
    assert with_out == set(WRITERS), with_out
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for command, (args, flag) in WRITERS.items():
        for out, why in ((afile / "out", f"{afile} is not a folder"), (Path("/proc/cook-test-out"), "cannot write in /proc")):
            proc = cook([*command.split(), *args, flag, out], cwd=tmp_path)
            assert proc.returncode == 2, (command, out, proc.stdout + proc.stderr)
            line = _one_line_error(proc, f"{flag} {out}", why)
            assert proc.stderr.strip() == line, (command, proc.stderr)
    # the default folder under an unwritable COOK_DATA_DIR
    proc = cook(["scrape", "wikipedia"], env={**cook_env, "COOK_DATA_DIR": str(afile / "data")}, cwd=tmp_path)
    assert proc.returncode == 2
    _one_line_error(proc, f"{afile / 'data' / 'wikipedia'}", "COOK_DATA_DIR", f"{afile} is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and afile.read_text() == "keep"
    assert not Path("/proc/cook-test-out").exists()


def test_list_files_for_queries_and_channels(tmp_path):
    """--queries and --channels files: one item a line, comments skipped (a query keeps its `#`: C# is a topic), and a
    missing, empty or non-UTF-8 file is one line naming it."""
    import pytest

    from model.errors import CookError
    from tasks.sources.crawl import read_queries_file
    from tasks.sources.youtube import read_channels_file

    (tmp_path / "q.txt").write_text("# topics\nC#\n\n  Black hole \n")
    assert read_queries_file(tmp_path / "q.txt") == ["C#", "Black hole"]
    (tmp_path / "c.txt").write_text("UCYO_jab_esuFRV4b17AJtAw  # 3Blue1Brown\n# more later\n\nUCHnyfMqiRRG1u-2MsSQLbXA\n")
    assert read_channels_file(str(tmp_path / "c.txt")) == ["UCYO_jab_esuFRV4b17AJtAw", "UCHnyfMqiRRG1u-2MsSQLbXA"]
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    for read, kind, what in ((read_queries_file, "queries", "queries"), (read_channels_file, "channels", "channel ids")):
        with pytest.raises(CookError, match=f"^{kind} file not found: "):
            read(str(tmp_path / "missing.txt"))
        with pytest.raises(CookError, match=f"^{kind} file has no {what}: .*empty.txt"):
            read(str(tmp_path / "empty.txt"))
        with pytest.raises(CookError, match=f"^{kind} file is not UTF-8 text: .*latin1.txt"):
            read(str(tmp_path / "latin1.txt"))


def test_quiet_console_and_log_file(cook, cook_env, tmp_path):
    """By default the console shows each flow's summary, not the engine's lines nor every training step; those go to
    DATA_DIR/logs/cook.log (and the UI) always, and to the console with --verbose."""
    from chardata import make_char_data

    data = make_char_data(tmp_path / "tokens", n_words=800)
    env = {k: v for k, v in cook_env.items() if k != "COOK_VERBOSE"}
    args = ["train", "--data", str(data), "--run", str(tmp_path / "run"), "--iters-per-chunk", "12", "--eval-iters", "2"]
    quiet = cook(args, env=env)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    out = quiet.stdout + quiet.stderr
    assert "wsd schedule" in out and "chunk 1 done: val loss" in out and f"run: {tmp_path / 'run'}" in out  # summaries
    assert "chunk 1 iter 10:" not in out and "Beginning flow run" not in out and "Finished in state" not in out
    log = (Path(cook_env["COOK_DATA_DIR"]) / "logs" / "cook.log").read_text()
    assert "chunk 1 iter 10:" in log and "Beginning flow run 'train tiny: 1 chunks x 12 iters" in log

    loud = cook(["--verbose", *args[:-4], "--iters-per-chunk", "12", "--eval-iters", "2", "--chunks", "2"], env=env)
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "chunk 2 iter 20:" in loud.stdout + loud.stderr


def test_a_temporary_api_that_does_not_start_in_time_is_one_line(cook, cook_env, corpus, tmp_path):
    """Without PREFECT_API_URL each command starts a temporary Prefect API: one that does not answer in time (a busy
    machine) is one line naming the two ways out, exit 1, nothing written."""
    env = {k: v for k, v in cook_env.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "0"  # gives up before its first look
    out = tmp_path / "tok"
    proc = cook(["tokenize", corpus, "--out", out], env=env)
    assert proc.returncode == 1
    _one_line_error(proc, "did not answer within 0 s", "PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    assert not out.exists()


_WAIT = """
from flows.cli import _ephemeral_wait
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as S
with _ephemeral_wait():
    print(S.value())
"""


def test_the_cli_waits_longer_for_its_temporary_api_unless_told(cook_env, tmp_path):
    """The CLI's wait for its temporary API is 120 s where no Prefect setting says otherwise (Prefect's 20 s failed
    runs on a busy machine); a value in the Prefect profile (or the environment) is kept."""
    import subprocess
    import sys

    from flows.cli import EPHEMERAL_STARTUP_S

    env = {k: v for k, v in cook_env.items() if k not in ("PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")}
    seen = {}
    for name, profile in (("default", None), ("profile", 33)):
        home = tmp_path / name
        home.mkdir()
        if profile is not None:
            (home / "profiles.toml").write_text('active = "default"\n\n[profiles.default]\n'
                                                f'PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS = "{profile}"\n')
        r = subprocess.run([sys.executable, "-c", _WAIT], env={**env, "PREFECT_HOME": str(home)}, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        seen[name] = int(r.stdout.split()[-1])
    assert seen == {"default": EPHEMERAL_STARTUP_S, "profile": 33} and EPHEMERAL_STARTUP_S > 20
