"""Artifacts with weights far from their initialization, shared by the runtime tests.

Freshly initialized tiny models have nearly flat logits and repeat one token forever, which
would make "the runtime picks the same tokens as PyTorch" trivially true. These artifacts add
seeded noise (std 0.3) to every weight matrix, so greedy outputs are varied and a wrong cache,
mask or position shows up as a different token.
"""

import os

import pytest

import llmspec

SPECS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "specs")
NOISE = 0.3


@pytest.fixture(scope="session")
def varied_artifact(tmp_path_factory):
    """``varied_artifact("tiny-gpt")``: the path of an fp32 artifact of that tiny spec whose
    weight matrices carry seeded noise. Exported once per test session; copy before editing."""
    made = {}

    def make(name: str):
        if name not in made:
            import torch
            from safetensors.torch import save_file

            from llmspec.exporter.pipeline import export

            spec = os.path.join(SPECS, f"{name}.yaml")
            torch.manual_seed(0)
            model = llmspec.build(spec, dtype="fp32")
            parameters = dict(model.named_parameters())
            generator = torch.Generator().manual_seed(2)
            state = {}
            for key, value in model.state_dict().items():
                if key in parameters and value.ndim >= 2:
                    value = value + NOISE * torch.randn(value.shape, generator=generator)
                state[key] = value.detach().contiguous()
            root = tmp_path_factory.mktemp("varied")
            save_file(state, str(root / "weights.safetensors"))
            made[name] = export(
                spec,
                root / name,
                weights=root / "weights.safetensors",
                progress=lambda line: None,
            )
        return made[name]

    return make
