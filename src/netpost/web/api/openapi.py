"""The OpenAPI 3.1 document of the web API, made from the endpoint declarations
(web/api/framework.py) and their pydantic models, and a docs page that renders it.

Why this way: pydantic (v2) writes JSON Schema 2020-12, which is what OpenAPI 3.1 uses, and
already validates every request; the few lines below walk the endpoints to place the schemas.
A library (spectree, apispec) would add a second description of the same routes.  The docs
page is one self-contained HTML file (no CDN, no external script): it fetches the document
and lists every operation with its parameters and schemas.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from netpost import __version__
from netpost.web.api.framework import COMMON_ERRORS, Endpoint
from netpost.web.api.models import Error

REF = "#/components/schemas/{model}"
_REASONS = {400: "Bad request", 401: "Not logged in", 403: "Not allowed", 404: "Not found",
            405: "Method not allowed", 409: "Conflict", 413: "Too large",
            415: "Not JSON", 422: "Invalid", 429: "Too many requests"}


def _models(endpoints: list[Endpoint]) -> list[tuple[type[BaseModel], Any]]:
    wanted: list[tuple[type[BaseModel], Any]] = [(Error, "serialization")]
    for e in endpoints:
        if e.body is not None:
            wanted.append((e.body, "validation"))
        if e.response is not None:
            wanted.append((e.response, "serialization"))
    seen: set[tuple[type[BaseModel], Any]] = set()
    return [m for m in wanted if not (m in seen or seen.add(m))]  # type: ignore[func-returns-value]


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                 "schema": prop}
        if description:
            param["description"] = description
        out.append(param)
    return out


def build_document(endpoints: list[Endpoint], *, prefix: str = "/api/v1") -> dict[str, Any]:
    keys, defs = models_json_schema(_models(endpoints), ref_template=REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    error = {"description": "error", "content": {"application/json": {
        "schema": keys[(Error, "serialization")]}}}
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        op: dict[str, Any] = {"operationId": e.operation_id, "summary": e.summary,
                              "tags": [e.tag]}
        if e.description:
            op["description"] = e.description
        params: list[dict[str, Any]] = []
        for name in re.findall(r"\{(\w+)\}", e.path):
            kind = e.path_types.get(name, str)
            params.append({"name": name, "in": "path", "required": True, "schema": (
                {"type": "integer", "minimum": 0, "maximum": 2 ** 62} if kind is int else
                {"type": "string", "minLength": 1, "maxLength": 320, "pattern": "^[^/]+$"})})
        if e.query is not None:
            params.extend(_query_parameters(e.query))
        if params:
            op["parameters"] = params
        if e.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": keys[(e.body, "validation")]}}}
        if e.response is not None:
            ok: dict[str, Any] = {"description": "success", "content": {"application/json": {
                "schema": keys[(e.response, "serialization")]}}}
        else:
            ok = {"description": "success", "content": {
                e.media_type or "application/octet-stream": {"schema": {"type": "string"}}}}
        responses: dict[str, Any] = {str(e.status): ok}
        for status in (*COMMON_ERRORS, 405, 415):
            responses[str(status)] = {**error, "description": _REASONS[status]}
        op["responses"] = responses
        op["security"] = [] if e.access == "public" else [{"bearer": []}, {"session": []}]
        if e.access == "admin":
            op["description"] = (op.get("description", "") + " Administrators only.").strip()
        paths.setdefault(prefix + e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "netpost web API", "version": __version__,
                 "description": "Mail, files and the server itself over JSON. Authenticate "
                 "with 'Authorization: Bearer <token>' (netpost token create) or the session "
                 "cookie of POST /api/v1/login plus X-CSRF-Token. See docs/api.md."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "a token from 'netpost token create' or "
                           "POST /api/v1/tokens"},
                "session": {"type": "apiKey", "in": "cookie", "name": "netpost_session",
                            "description": "set by POST /api/v1/login; state-changing "
                            "requests also need the X-CSRF-Token header"},
            },
        },
    }


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>netpost web API</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:60em;padding:1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
.op{border:1px solid #ddd;border-radius:6px;margin:.6em 0;padding:.3em .8em}
.op summary{cursor:pointer} code,pre{font:13px ui-monospace,monospace}
pre{background:#f6f6f6;padding:.6em;overflow:auto;max-height:30em}
.m{display:inline-block;min-width:4.5em;font-weight:bold}
.GET{color:#1565c0}.POST{color:#2e7d32}.PUT{color:#8d6e00}.DELETE{color:#c62828}
.admin{font-size:.8em;color:#6a1b9a;margin-left:.5em}
</style></head><body>
<h1>netpost web API</h1>
<p>The machine-readable document is <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>
(OpenAPI 3.1). <span id="intro"></span></p>
<div id="ops">loading&hellip;</div>
<script>
"use strict";
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}
fetch("/api/v1/openapi.json").then(r => r.json()).then(doc => {
  document.getElementById("intro").textContent = doc.info.description;
  const byTag = {};
  for (const [path, ops] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(ops))
      (byTag[op.tags[0]] = byTag[op.tags[0]] || []).push([method.toUpperCase(), path, op]);
  const root = document.getElementById("ops");
  root.textContent = "";
  for (const [tag, ops] of Object.entries(byTag)) {
    root.append(el("h2", {}, tag));
    for (const [method, path, op] of ops) {
      const det = el("details", {class: "op"});
      const sum = el("summary", {}, el("span", {class: "m " + method}, method), " ",
                     el("code", {}, path), " \\u2014 " + op.summary);
      if ((op.description || "").includes("Administrators only"))
        sum.append(el("span", {class: "admin"}, "admin"));
      det.append(sum);
      if (op.description) det.append(el("p", {}, op.description));
      if (op.parameters) det.append(el("p", {}, "Parameters:"),
        el("pre", {}, JSON.stringify(op.parameters, null, 1)));
      if (op.requestBody) det.append(el("p", {}, "Body:"),
        el("pre", {}, JSON.stringify(op.requestBody.content, null, 1)));
      const ok = Object.entries(op.responses).filter(([s]) => s < 400);
      det.append(el("p", {}, "Answer:"), el("pre", {}, JSON.stringify(ok, null, 1)));
      root.append(det);
    }
  }
  root.append(el("h2", {}, "schemas"),
              el("pre", {}, JSON.stringify(doc.components.schemas, null, 1)));
}).catch(e => { document.getElementById("ops").textContent = "cannot load: " + e; });
</script></body></html>
"""
