"""The app's MCP server: both modes' tools are listed, described by the actions' docstrings."""

from __future__ import annotations

import asyncio

import httpx

pytest_plugins = ["tests.e2e_fixtures"]  # the served app, tiny models and media fixtures


TOOLS = {
    "extract_animation", "animate", "animate_oneshot", "animate_draft",
    "extract_replacement", "replace", "replace_oneshot", "replace_draft",
}


def test_schema_lists_both_modes_with_described_parameters(light_app):
    response = httpx.get(f"{light_app.rstrip('/')}/gradio_api/mcp/schema", timeout=30)
    response.raise_for_status()
    tools = {tool["name"]: tool for tool in response.json()}
    assert set(tools) == TOOLS  # the page's helpers (frame picker, previews) are not tools
    assert "Animation" in tools["animate_oneshot"]["description"]
    assert "Replacement" in tools["replace_oneshot"]["description"]
    replace_inputs = tools["extract_replacement"]["inputSchema"]["properties"]
    assert {"photo", "video", "points", "mask_kernel", "mask_iterations", "blockify"} <= set(replace_inputs)
    assert "dilation" in replace_inputs["mask_kernel"]["description"]
    animate_inputs = tools["animate"]["inputSchema"]["properties"]
    assert "job_id" in animate_inputs and "request" not in animate_inputs and "progress" not in animate_inputs
    assert "/extract_animation" in animate_inputs["job_id"]["description"]


def test_mcp_protocol_lists_the_tools(light_app):
    """A real MCP client session over streamable HTTP sees the same tools."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def list_tools() -> list:
        async with streamablehttp_client(f"{light_app.rstrip('/')}/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return (await session.list_tools()).tools

    tools = asyncio.run(list_tools())
    assert {tool.name for tool in tools} >= {"extract_animation", "replace_oneshot"}
    described = {tool.name: tool.description for tool in tools}
    assert "skeleton" in described["extract_animation"]


def test_client_api_names_every_output(light_app):
    """`view_api()` reads as documentation: every parameter and output of every endpoint has a name."""
    from gradio_client import Client

    info = Client(light_app, verbose=False).view_api(print_info=False, return_format="dict")
    endpoints = info["named_endpoints"]
    assert set(endpoints) == {f"/{tool}" for tool in TOOLS}
    names = {
        endpoint: [item["label"] for item in spec["returns"]] + [item["parameter_name"] for item in spec["parameters"]]
        for endpoint, spec in endpoints.items()
    }
    unnamed = {endpoint: [name for name in found if not name or name.startswith("value_")] for endpoint, found in names.items()}
    assert not any(unnamed.values()), unnamed
    returns = {endpoint: [item["label"] for item in spec["returns"]] for endpoint, spec in endpoints.items()}
    assert returns["/extract_replacement"][:4] == [
        "Skeleton the model follows", "Face crops", "Mask (regenerated area)", "Background the model keeps",
    ]
    assert "Side by side (video | result)" in returns["/replace"]
    assert "Side by side (driving video | result)" in returns["/animate"]
