"""The Space's actions: what ``app.py``'s buttons and API endpoints do, apart from the page itself.

- `config`: `AppConfig`, how the app was started.
- `studio`: `Studio`, the endpoints (their docstrings are the API and MCP descriptions) and the page's helpers.
- `inputs`: the page's values read as the package's arguments.
- `gpu_time`: the GPU seconds each call asks ZeroGPU for, and what the page says a generation will take.
- `zerogpu`: a generation as GPU calls of at most 300 s on ZeroGPU; quotas and the platform's refusals.
- `streaming`: the blocking job on a worker thread, streamed to the async endpoints as it goes.
- `ranks`: the app on several GPUs under torchrun: process 0 serves, the others follow its generations.
"""

from .config import AppConfig
from .studio import PREVIEWS, PageProgress, Studio

__all__ = ["PREVIEWS", "AppConfig", "PageProgress", "Studio"]
