"""Write docs/configuration.md from the settings the code reads (core/config.py KEYS)."""

from pathlib import Path

from personavlm_cli.core.config import KEYS, env_var

HEADER = """# Configuration

One configuration object is loaded once per command, with this precedence (highest first):

1. command-line flags (`--model`, `--gpu-layers`, `--context`, `--user`, ...)
2. environment variables `PERSONAVLM_<KEY>` (dots become underscores)
3. `config.yaml` in the config directory (`personavlm config path` prints it)
4. the defaults below

`PERSONAVLM_HOME=DIR` moves everything: `DIR/config.yaml`, `DIR/models.yaml`, `DIR/data/users/<name>/`,
`DIR/cache/`. Without it the platform's directories are used (platformdirs: on Linux
`~/.config/personavlm` and `~/.local/share/personavlm`).

`personavlm config show` prints every key with its value and where the value came from. An unknown key, a
value of the wrong type, or a file that is not valid YAML is refused with one line naming the problem.

Example `config.yaml`:

```yaml
user: ada
model:
  path: qwen-vl        # a registered name or a GGUF path
  gpu_layers: auto
  context: 8192
clip:
  weights: /home/ada/models/open_clip_vit_b32.safetensors
chat:
  history: false
```

| key | environment variable | default | meaning |
|---|---|---|---|
"""


def render() -> str:
    rows = []
    for k in KEYS.values():
        default = "" if k.default is None else f"`{k.default}`"
        choices = f" ({', '.join(k.choices)})" if k.choices else ""
        rows.append(f"| `{k.name}` | `{env_var(k.name)}` | {default} | {k.doc}{choices} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").write_text(render())
