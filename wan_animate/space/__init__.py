"""The Space's actions: what ``app.py``'s buttons and API endpoints do, apart from the page itself.

- `config`: `AppConfig`, how the app was started.
- `studio`: `Studio`, the endpoints (their docstrings are the API and MCP descriptions) and the page's helpers.
- `inputs`: the page's values read as the package's arguments.
- `gpu_time`: the GPU seconds each action asks ZeroGPU for.
"""

from .config import AppConfig
from .studio import PREVIEWS, PageProgress, Studio

__all__ = ["PREVIEWS", "AppConfig", "PageProgress", "Studio"]
