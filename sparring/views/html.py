"""One rollout record as a self-contained HTML page: no network, inline CSS and a few lines of JS.

What a researcher checks first: who said what (the policy's view, the simulated user's own view),
which tools were called with which arguments and what came back, and what the trainer will see:
every token of every segment, coloured by loss mask (grey: prompt, blue: trained), with its id and
logprob on hover, the start of each policy call marked, and an optional shading by probability that
makes surprising tokens stand out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

import orjson

# Who produced a message in the user's own view: it is the assistant there; its "user" messages are what it
# was shown of the policy's turn (the policy's visible replies and the environment's observation).
_USER_VIEW_ACTOR = {"assistant": "user", "user": "shown", "system": "env", "tool": "env"}
_ROLE_LABEL = {"system": "system prompt", "user": "user message", "assistant": "assistant", "tool": "tool result"}

_CSS = """
:root { --policy: #2563eb; --user: #d97706; --env: #6b7280; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #111827;
       background: #f9fafb; }
header { padding: 16px 24px; background: #111827; color: #f9fafb; }
header h1 { font-size: 18px; margin: 0 0 8px; font-weight: 600; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; }
.chip { background: #374151; border-radius: 10px; padding: 2px 10px; font-size: 12px; }
.chip.completed { background: #166534; } .chip.truncated { background: #92400e; } .chip.aborted { background: #991b1b; }
main { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 16px; padding: 16px 24px; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 12px 16px; min-width: 0; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 15px; margin: 4px 0 12px; }
.message { border-left: 4px solid var(--env); padding: 6px 10px; margin: 0 0 10px; background: #f9fafb;
           border-radius: 4px; }
.message.actor-policy { border-color: var(--policy); background: #eff6ff; }
.message.actor-user { border-color: var(--user); background: #fffbeb; }
.who { font-size: 12px; font-weight: 600; color: #374151; margin-bottom: 2px; }
.who .n { color: #9ca3af; font-weight: 400; margin-right: 6px; }
.text { white-space: pre-wrap; word-break: break-word; margin: 0; font: inherit; }
.tool .text, .tool-call code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
.tool-call { margin-top: 4px; padding: 4px 8px; background: #e0e7ff; border-radius: 4px; }
.tool-call .id, .tool .id { color: #6b7280; font-size: 11px; margin-left: 6px; }
.status-error .text { color: #b91c1c; }
.error { color: #991b1b; background: #fef2f2; padding: 8px; border-radius: 4px; white-space: pre-wrap; }
.controls { display: flex; gap: 16px; flex-wrap: wrap; margin-bottom: 8px; font-size: 13px; }
.legend span { display: inline-block; padding: 0 6px; border-radius: 3px; margin-right: 4px; }
.segment { margin-bottom: 16px; }
.segment h3 { font-size: 13px; margin: 8px 0; color: #374151; }
.tokens { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; line-height: 1.9;
          white-space: pre-wrap; word-break: break-all; }
.t { border-radius: 2px; }
.m0 { color: #6b7280; background: #f3f4f6; }
.m1 { color: #1e3a8a; background: #bfdbfe; }
.ids .t { margin-right: 3px; }
.nl { color: #9ca3af; }
.call-mark { font: 600 11px system-ui, sans-serif; color: #fff; background: var(--policy); border-radius: 3px;
             padding: 0 4px; margin: 0 2px; }
body.hide-prompt .m0 { display: none; }
body.shade .m1 { background: rgba(220, 38, 38, calc(1 - var(--p, 1))); color: #111827; }
.note { color: #6b7280; font-size: 12px; }
.chip.label-none { background: #166534; } .chip.label-agent { background: #1e40af; }
.chip.label-user, .chip.label-tool, .chip.label-env { background: #92400e; }
ul.reasons { margin: 0; padding-left: 18px; } ul.reasons li { margin: 2px 0 6px; }
.reason .check { font-family: ui-monospace, Menlo, Consolas, monospace; font-weight: 600; }
.reason.fault .check { color: #991b1b; }
.message:target { outline: 2px solid #f59e0b; }
table.kv { border-collapse: collapse; font-size: 13px; }
table.kv td { padding: 2px 12px 2px 0; vertical-align: top; }
"""

_JS = """
for (const box of document.querySelectorAll('input[data-body-class]')) {
  const apply = () => document.body.classList.toggle(box.dataset.bodyClass, box.checked);
  box.addEventListener('change', apply);
  apply();
}
"""


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)


def render_message(message: dict[str, Any], number: int, actor: str, view: str = "messages") -> str:
    """One message: who produced it, its text, its tool calls, or the tool result it is.

    Its id is `{view}-{number}` (`messages-3`, `user_messages-2`), where an attribution reason points."""
    role: str = message.get("role", "?")
    label = _ROLE_LABEL.get(role, role)
    classes = f"message actor-{escape(actor)} role-{escape(role)}"
    if role == "tool":
        classes += " tool"
        if message.get("status") == "error":
            classes += " status-error"
        label = f"result of {message.get('name') or 'a tool'}"
        if message.get("fault"):
            label += f" (error, the {message['fault']}'s fault)"
    parts = [f'<div class="{classes}" id="{escape(view)}-{number}" data-actor="{escape(actor)}">']
    call_id = f'<span class="id">{escape(str(message["tool_call_id"]))}</span>' if message.get("tool_call_id") else ""
    parts.append(f'<div class="who"><span class="n">#{number}</span>{escape(actor)} · {escape(label)}{call_id}</div>')
    text = _text(message.get("content"))
    if text:
        parts.append(f'<pre class="text">{escape(text)}</pre>')
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(
            f'<div class="tool-call">calls <b>{escape(str(function.get("name")))}</b> '
            f"<code>{escape(str(function.get('arguments')))}</code>"
            f'<span class="id">{escape(str(call.get("id")))}</span></div>'
        )
    if not text and not message.get("tool_calls"):
        parts.append('<pre class="text note">(empty)</pre>')
    parts.append("</div>")
    return "".join(parts)


def render_conversation(messages: Sequence[dict[str, Any]], actors: Sequence[str], view: str = "messages") -> str:
    """A whole history, one box per message."""
    return "\n".join(render_message(m, i, a, view) for i, (m, a) in enumerate(zip(messages, actors, strict=True)))


def render_attribution(record: dict[str, Any]) -> str:
    """Who made the episode fail, and each reason, linked to the message where it was seen."""
    attribution = record.get("attribution")
    if not isinstance(attribution, dict):
        return '<p class="note">No attribution in this record (written before records had one).</p>'
    label = str(attribution.get("label"))
    judge = attribution.get("judge")
    judged = ""
    if isinstance(judge, dict):
        answer = judge.get("blame") or f"no verdict ({judge.get('error')})"
        judged = f' <span class="note">judge {escape(str(judge.get("model")))}: {escape(str(answer))}</span>'
    items = []
    for found in attribution.get("reasons") or ():
        where = found.get("where")
        place = ""
        if isinstance(where, dict):
            view, index = escape(str(where.get("view"))), escape(str(where.get("index")))
            place = f' <a href="#{view}-{index}">{view}[{index}]</a>'
        severity = str(found.get("severity"))
        items.append(
            f'<li class="reason {escape(severity)}"><span class="check">{escape(str(found.get("check")))}</span> '
            f"({escape(str(found.get('actor')))}, {escape(severity)}){place}: {escape(str(found.get('detail')))}</li>"
        )
    listed = f'<ul class="reasons">{"".join(items)}</ul>' if items else '<p class="note">No reasons found.</p>'
    return f"<p>Label <b>{escape(label)}</b>{judged}</p>{listed}"


def _token_title(token_id: int, mask: int, logprob: float) -> str:
    if not mask:
        return f"id {token_id} · prompt (loss mask 0, not trained)"
    return f"id {token_id} · trained (loss mask 1) · logprob {logprob:.4f} · p {math.exp(logprob):.3f}"


def _token_body(token_id: int, decode: Callable[[int], str] | None) -> str:
    if decode is None:
        return str(token_id)
    text = decode(token_id)
    if not text:
        return '<span class="nl">∅</span>'
    return escape(text).replace("\n", '<span class="nl">↵</span>\n')


def render_segment(
    segment: dict[str, Any], number: int, call_starts: dict[int, int], decode: Callable[[int], str] | None
) -> str:
    """Every token of one segment, coloured by loss mask; `call_starts` maps a position to the call starting there."""
    ids, mask, logprobs = segment["token_ids"], segment["loss_mask"], segment["logprobs"]
    trained = sum(mask)
    spans = []
    for position, (token_id, m, logprob) in enumerate(zip(ids, mask, logprobs, strict=True)):
        if position in call_starts:
            spans.append(
                f'<span class="call-mark" title="policy call {call_starts[position]} starts here">'
                f"call {call_starts[position]}</span>"
            )
        shade = f' style="--p:{math.exp(logprob):.3f}"' if m else ""
        spans.append(
            f'<span class="t m{1 if m else 0}"{shade} title="{escape(_token_title(token_id, m, logprob))}">'
            f"{_token_body(token_id, decode)}</span>"
        )
    return (
        f'<div class="segment"><h3>segment {number}: {len(ids)} tokens, {trained} trained</h3>'
        f'<div class="tokens{"" if decode else " ids"}">{"".join(spans)}</div></div>'
    )


def render_tokens(trajectory: dict[str, Any], decode: Callable[[int], str] | None) -> str:
    """All segments, with where each policy call's completion begins."""
    segments = trajectory.get("segments") or []
    if not segments:
        return '<p class="note">No policy tokens: the episode made no policy call that answered.</p>'
    starts: dict[int, dict[int, int]] = {}
    for number, call in enumerate(trajectory.get("calls") or ()):
        starts.setdefault(call["segment"], {})[call["prompt_len"]] = number
    return "\n".join(render_segment(s, i, starts.get(i, {}), decode) for i, s in enumerate(segments))


def _summary(record: dict[str, Any]) -> str:
    rows = {
        "reward components": _json(record.get("reward_components") or {}),
        "env result": _json(record.get("env_result") or {}),
        "usage": _json(record.get("usage") or {}),
        "timing": _json(record.get("timing") or {}),
    }
    cells = "".join(
        f"<tr><td>{escape(k)}</td><td><pre class='text'>{escape(v)}</pre></td></tr>" for k, v in rows.items()
    )
    error = record.get("error")
    error_html = (
        f'<div class="error">{escape(error.get("type", ""))}: {escape(error.get("message", ""))}</div>' if error else ""
    )
    return f'{error_html}<table class="kv">{cells}</table>'


def _label(record: dict[str, Any]) -> str:
    attribution = record.get("attribution")
    return str(attribution.get("label")) if isinstance(attribution, dict) else "unknown"


def rollout_page(record: dict[str, Any], decode: Callable[[int], str] | None = None) -> str:
    """The page for one record; `decode` turns a token id into its text for display (None: show ids)."""
    trajectory = record.get("trajectory") or {}
    messages = record.get("messages") or []
    user_messages = record.get("user_messages") or []
    status = str(record.get("status"))
    chips = [
        (f"env {record.get('env')}", ""),
        (f"{status} ({record.get('stop_reason')})", status),
        (f"reward {record.get('reward')}", ""),
        (f"attribution {_label(record)}", f"label-{_label(record)}"),
        (f"{record.get('num_turns', 0)} turns", ""),
        (f"{record.get('num_policy_calls', 0)} policy calls", ""),
        (f"{record.get('num_user_calls', 0)} user calls", ""),
        (f"{trajectory.get('prefix_mismatches', 0)} prefix mismatches", ""),
        (f"{(record.get('timing') or {}).get('wall_s', 0):.2f} s", ""),
    ]
    if record.get("task_id") is not None:
        chips.insert(1, (f"task {record.get('task_id')}", ""))
    chip_html = "".join(f'<span class="chip {escape(cls)}">{escape(text)}</span>' for text, cls in chips)
    token_note = (
        "Token text decoded one id at a time with the policy's tokenizer, for display only."
        if decode
        else "Token ids shown: pass --tokenizer DIR (the policy model's folder) or URL (its server) to see their text."
    )
    title = f"sparring rollout {record.get('id')}"
    user_actors = [_USER_VIEW_ACTOR.get(m.get("role", ""), "env") for m in user_messages]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_CSS}</style></head>
<body>
<header><h1>{escape(title)}</h1><div class="chips">{chip_html}</div></header>
<main>
<section id="policy-view"><h2>The policy's view ({len(messages)} messages)</h2>
{render_conversation(messages, [m.get("actor") or "env" for m in messages], "messages")}
</section>
<section id="user-view"><h2>The simulated user's own view ({len(user_messages)} messages)</h2>
<p class="note">Roles are flipped here: the user model is the assistant; what it was shown of the policy's
turn (visible replies, the environment's observation) reaches it as user messages.</p>
{render_conversation(user_messages, user_actors, "user_messages")}
</section>
<section id="attribution" class="wide"><h2>Who made it fail</h2>{render_attribution(record)}</section>
<section id="outcome" class="wide"><h2>Outcome</h2>{_summary(record)}</section>
<section id="tokens" class="wide"><h2>The policy's tokens (what the trainer sees)</h2>
<div class="controls">
<span class="legend"><span class="m0">prompt, loss mask 0</span><span class="m1">generated, loss mask 1</span>
<span class="call-mark">call k</span> start of a policy call's completion; hover a token for its id and logprob</span>
<label><input type="checkbox" data-body-class="shade"> shade generated tokens by probability (red: unlikely)</label>
<label><input type="checkbox" data-body-class="hide-prompt"> hide prompt tokens</label>
</div>
<p class="note">{escape(token_note)}</p>
{render_tokens(trajectory, decode)}
</section>
</main>
<script>{_JS}</script>
</body></html>
"""
