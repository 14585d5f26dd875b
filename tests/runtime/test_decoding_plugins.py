"""Third-party decoding steps from the ``llmspec.decoding`` entry-point group.

Each test installs a plugin through a temporary dist-info directory on ``sys.path`` and uses it
from a fresh Python process, so that importlib.metadata's view of installed packages does not
leak between tests.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from runtime.decoding import DecodingError


@dataclass(frozen=True, kw_only=True)
class BoostFirst:
    """Add ``amount`` to the logit of token 0. No-op: 0."""

    type: Literal["boost_first"] = "boost_first"
    amount: float = 0.0
    parameter: ClassVar[str] = "amount"

    def __post_init__(self):
        if self.amount < 0:
            raise DecodingError(f"boost_first must be >= 0 (0 disables it), got {self.amount}")

    def start(self, request):
        return None  # keeps nothing about a request

    def process(self, logits, request, state):
        logits[:, 0] += self.amount
        return logits


class LastTokens:
    """Each row's last accepted token (-1 before the first)."""

    def __init__(self, request):
        self.last = np.array(
            [int(request.sequence(row)[-1]) if len(request.sequence(row)) else -1
             for row in range(request.batch_size)]
        )

    def accept(self, rows, tokens):
        self.last[rows] = tokens

    def reorder(self, rows):
        self.last = self.last[rows]


@dataclass(frozen=True, kw_only=True)
class NoEcho:
    """Forbid each row's last token (a stateful processor in the new shape). No-op: False."""

    type: Literal["no_echo"] = "no_echo"

    def start(self, request):
        return LastTokens(request)

    def process(self, logits, request, state):
        rows = np.flatnonzero(state.last >= 0)
        logits[rows, state.last[rows]] = -np.inf
        return logits


@dataclass(frozen=True, kw_only=True)
class OldShape:
    """A processor written to the old contract: it reads counts from a shared state."""

    type: Literal["old_shape"] = "old_shape"

    def process(self, logits, state):
        return logits - state.generated_counts()


@dataclass(frozen=True, kw_only=True)
class HighestId:
    """Select the highest token id still allowed."""

    type: Literal["highest_id"] = "highest_id"

    def select(self, logits, state):
        return np.array([np.flatnonzero(row > -np.inf)[-1] for row in logits])


class NotADataclass:
    type = "not_a_dataclass"

    def process(self, logits, state):
        return logits
'''

ENTRY_POINTS = """
[llmspec.decoding]
boost_first = myplug:BoostFirst
highest_id = myplug:HighestId
no_echo = myplug:NoEcho
old_shape = myplug:OldShape
not_a_dataclass = myplug:NotADataclass
missing_module = myplug_gone:Step
"""


def run_python(code: str, plugin_dir: Path | None) -> subprocess.CompletedProcess:
    paths = [str(plugin_dir)] if plugin_dir else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    (tmp_path / "myplug.py").write_text(PLUGIN)
    dist_info = tmp_path / "myplug-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    return tmp_path


def test_an_installed_plugin_parses_round_trips_and_decodes(plugin_dir):
    result = run_python(
        """
        import numpy as np
        from runtime.decoding import DecodingChain
        from runtime.sampling import SamplerChain, DecodingState

        chain = DecodingChain.parse("boost_first=3,sample")
        assert str(chain) == "boost_first=3.0,sample", str(chain)
        assert DecodingChain.from_json(chain.to_json()) == chain
        assert DecodingChain.parse(str(chain)) == chain

        logits = np.array([[0.0, 2.0, 1.0, -50.0]], dtype=np.float32)
        state = DecodingState([[1, 2]], 4, seed=0)
        assert SamplerChain("boost_first=3,greedy").select(logits.copy(), state).tolist() == [0]
        assert SamplerChain("top_k=2,highest_id").select(logits.copy(), state).tolist() == [2]
        print("ok")
        """,
        plugin_dir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ("boost_first=-1,sample", "boost_first must be >= 0 (0 disables it), got -1.0"),
        ("highest_id,top_k=2", "'highest_id' must be the last step"),
        ("highest_id=2", "'highest_id' takes no value"),
        (
            "nope,sample",
            "unknown decoding step 'nope'; known steps: beam_search, frequency_penalty, "
            "greedy, min_p, no_repeat_ngram, presence_penalty, repetition_penalty, sample, "
            "temperature, top_k, top_p, typical; plugins: boost_first, highest_id, "
            "missing_module, no_echo, not_a_dataclass, old_shape",
        ),
        (
            "missing_module,sample",
            "decoding step 'missing_module' cannot be used: 'myplug_gone:Step' (from myplug) "
            "failed to load: ModuleNotFoundError",
        ),
        (
            "not_a_dataclass,sample",
            "decoding step 'not_a_dataclass' cannot be used: 'myplug:NotADataclass' "
            "(from myplug): it must name a dataclass",
        ),
        (
            "old_shape,sample",
            "decoding step 'old_shape' cannot be used: 'myplug:OldShape' (from myplug): it is "
            "written to the old processor contract, process(logits, state) reading a shared "
            "DecodingState",
        ),
        ("old_shape,sample", "define start(request) returning its state for the batch"),
        ("old_shape,sample", "and process(logits, request, state) receiving that state"),
    ],
)
def test_plugin_errors_are_actionable(plugin_dir, chain, message):
    result = run_python(
        f"""
        from runtime.decoding import DecodingChain, DecodingError
        try:
            DecodingChain.parse({chain!r})
        except DecodingError as err:
            print(err)
        """,
        plugin_dir,
    )
    assert result.returncode == 0, result.stderr
    assert message in result.stdout


def test_without_the_plugin_its_name_is_unknown_and_built_ins_work():
    result = run_python(
        """
        from runtime.decoding import DecodingChain, DecodingError
        assert str(DecodingChain.parse("top_p=0.9,sample")) == "top_p=0.9,sample"
        try:
            DecodingChain.parse("boost_first=3,sample")
        except DecodingError as err:
            print(err)
        """,
        None,
    )
    assert result.returncode == 0, result.stderr
    assert "unknown decoding step 'boost_first'" in result.stdout


def test_a_stateful_plugin_owns_its_state_and_learns_tokens_through_accept(plugin_dir):
    result = run_python(
        """
        import numpy as np
        from runtime.sampling import SamplerChain

        chain = SamplerChain("no_echo,greedy")
        logits = np.array([[0.0, 3.0, 2.0, 1.0], [5.0, 0.0, 0.0, 0.0]], dtype=np.float32)
        state = chain.start([[1], []], 4)
        picked = []
        for _ in range(3):
            tokens = chain.select(logits.copy(), state)
            state.append(tokens)
            picked.append(tokens.tolist())
        # Row 0 starts after its prompt's 1, so 2 first, then 1 and 2 alternate; row 1 has
        # no prompt: 0 first, then anything but its last token.
        assert picked == [[2, 0], [1, 1], [2, 0]], picked
        other = chain.start([[2], [0]], 4)  # a second request: its own, fresh state
        assert chain.select(logits.copy(), other).tolist() == [1, 1]
        state.reorder(np.array([0, 0]))  # both rows take row 0's state: its last token was 2
        assert chain.select(logits.copy(), state).tolist() == [1, 0]
        print("ok")
        """,
        plugin_dir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_an_old_shape_processor_passed_as_an_object_is_refused_with_how_to_update():
    result = run_python(
        """
        from dataclasses import dataclass
        from typing import Literal
        from runtime.decoding import DecodingError
        from runtime.sampling import SamplerChain

        @dataclass(frozen=True)
        class Old:
            type: Literal["old"] = "old"

            def process(self, logits, state):
                return logits

        try:
            SamplerChain([Old(), "greedy"])
        except DecodingError as err:
            print(err)
        """,
        None,
    )
    assert result.returncode == 0, result.stderr
    assert "cannot be used: it is written to the old processor contract" in result.stdout
    assert "define start(request)" in result.stdout
