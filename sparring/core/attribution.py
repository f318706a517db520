"""Attribution: who made an episode fail, so a trainer can leave out what the policy did not cause.

Every episode gets a verdict, `{"label": ..., "reasons": [...]}`, from rule checks that need no model
and read only the record: `messages` (the policy's view, each message with its `actor`), `user_messages`
(the simulated user's role-flipped view: its persona as the system prompt, its own replies as
`assistant`), `status`, `stop_reason`, `reward` and `error`. Each reason names its check, the actor it
blames, its severity, a short detail and where it saw it (a message index in one of the two views); a
check keeps its first REASONS_PER_CHECK reasons per severity and counts the rest.

Labels
  none   the episode succeeded (reward at least `full_reward`); its reasons, if any, are kept as notes
         (a user that repeated itself in a won game is worth seeing, not worth dropping the game for).
  env    the environment or the machinery failed: every `aborted` episode (env_error, model_error,
         invalid_task, interrupted, ...: none is scored), or an environment's own check said the task
         itself was broken.
  tool   a tool failed on its own (an internal error, a 5xx, a time-out), not because of the caller's
         arguments, and no later call of the same tool succeeded.
  user   the simulated user broke the episode: it left its role, looped, echoed the policy, never
         stated its request, went silent, or stopped on a goal it falsely called met.
  agent  a failed episode with none of the above: the policy's own failure, the one to train on.

Precedence: aborted -> env; succeeded -> none; then the first actor with a `fault` reason among env,
tool, user; else agent. Objective infrastructure signals outrank the user checks (a user that
flounders after a tool broke is reacting to it), and only `fault` reasons decide: `note` reasons
(the policy's refused tool calls, a user's illegal moves the environment recovered from, a repeat
the policy provoked by repeating itself) explain without moving the label. Reasons about the agent
(the policy echoing the user, the policy claiming a success it did not reach) say why the label is
`agent` when nothing outranks them.

The user checks look only at the user's own replies (never the opening it was handed, never the
environment's observations), and only when there was a simulated user (gateway records have none):
  template_leak          chat-template tokens or bare role headers in its words or tool arguments
  spoke_as_assistant     the agent's lines (offers of help, asking for the customer's details), an
                         assistant label, or a tool call written as text
  revealed_instructions  a long run copied from its persona, outside what it may say word for word
  message_loop           a unit of words repeated back to back inside one reply
  repeated_message       the same long reply again, to a different question (to the same one: a note)
  echoed_policy          a reply that is mostly a copy of the policy's words it answered
  no_request             the episode ended before it said what it wanted (unless the opening said it)
  user_silent            the episode ended on its empty reply (stop_reason user_empty)
  malformed_stop         a misspelt stop token reached the policy
  false_success_claim    it stopped (user_stop) below full reward saying the goal was met, while the
                         policy never said so (if the policy did, the claim is the agent's)
Then tool_failure (a tool's own failure; a note when recovered), policy_tool_errors and
user_tool_errors (refused calls, counted, notes), and policy_echoed_user (agent).

What rules cannot see (a user that quietly changed its goal, stopped after half of it, or a polite
customer who misread the agent) is left to an optional LLM judge; the rules aim at precision, so an
episode blamed on the user really had a broken user. Everything is linear in the transcript's length:
this runs at verify on every episode.

Environments tell attribution about a task with `AttributionRules`: their own `AttributionCheck`s
(functions of the `Episode` yielding `Reason`s, validated, then deciding the label like the built-in
ones), the persona text the user may say word for word, and the reward of a success.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

Label = Literal["none", "agent", "user", "tool", "env"]
LABELS: tuple[Label, ...] = ("none", "agent", "user", "tool", "env")
Actor = Literal["agent", "user", "tool", "env"]
Severity = Literal["fault", "note"]
View = Literal["messages", "user_messages"]


@with_config(ConfigDict(extra="forbid"))
class Where(TypedDict):
    """A message of the record: its index in `messages` (the policy's view) or in `user_messages`."""

    view: View
    index: int


@with_config(ConfigDict(extra="forbid"))
class Reason(TypedDict):
    """One finding: which check, whom it blames, whether it decides the label, what it saw and where."""

    check: str
    actor: Actor
    severity: Severity
    detail: str
    where: Where | None


Blame = Literal["user", "agent", "tool", "unclear"]


class JudgeVerdict(TypedDict):
    """What the optional LLM judge said (core/judge.py): its model, whom it blamed, or why it could not say."""

    model: str
    blame: Blame | None
    """None when the judge failed (`error` says how); its reason is then a `judge_error` note."""
    error: str | None


class Attribution(TypedDict):
    """An episode's verdict, the record's `attribution` field: who made it fail (`none` when it did not),
    every reason found (the judge's among them, check `judge`), and the judge's own answer when it was
    asked (None when no judge is configured or the rules had already decided)."""

    label: Label
    reasons: list[Reason]
    judge: JudgeVerdict | None


FULL_REWARD = 1.0
"""The reward of a success; anything below is a failure someone caused (a tic-tac-toe draw, 0.5, is one)."""

DEFAULT_STOP_TOKENS: tuple[str, ...] = ("###STOP###",)
"""τ-bench's stop token, sparring's default; pass the episode's own `user_stop_tokens` when known."""

ECHO_MIN_WORDS = 6
"""A reply shorter than this ("Yes, please cancel it.") shares the policy's words by nature, not by echo."""
ECHO_SHINGLE = 3
"""Word n-grams compared for echoes: 3 keeps word order without demanding exact punctuation."""
ECHO_CONTAINED = 0.8
"""An echo has at least this share of its own n-grams in the policy's reply: little of the user's own."""
ECHO_COVERED = 0.5
"""...and repeats at least this share of the reply: quoting one phrase of a long reply is not an echo."""

LOOP_MIN_COPIES = 3
"""A loop is a unit of words said this many times in a row; twice is emphasis ("no, no"), three is a loop."""
LOOP_MIN_WORDS = 12
"""...spanning at least this many words, so "ok ok ok" or "very very very" stays speech."""
LOOP_MAX_UNIT = 40
"""The longest unit looked for (a sentence or two); bounds the scan at LOOP_MAX_UNIT passes over a message."""

DUPLICATE_MIN_WORDS = 8
"""Repeating a short answer is normal ("My order is #W1001." when asked again); repeating 8+ words verbatim
to a different question is a model stuck on one reply (real customers rephrase)."""

LEAK_NGRAM = 8
"""Words in a run copied from the persona: a customer's own first-person wording ("I want to cancel my
order") never matches a second-person persona ("You want to cancel your order") for eight words by chance."""

REQUEST_MIN_CONTENT_WORDS = 2
"""A request needs at least two words beyond greetings, thanks and fillers ("cancel ... order")."""

REASONS_PER_CHECK = 3
"""Reasons kept per check and severity: a user stuck in a loop for 30 turns needs three examples, not 30."""
QUOTE_CHARS = 60
"""How much of a message a reason quotes."""

WORD = re.compile(r"[a-z0-9]+(?:['’.][a-z0-9]+)*")
TEMPLATE_TOKEN = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|</s>")
ROLE_HEADER_LINE = re.compile(r"^[ \t]*(?:system|user|assistant)[ \t]*$", re.I | re.M)
"""A line that is only a role name: a chat template's turn header with its special tokens stripped."""
ASSISTANT_LABEL = re.compile(r"^[ \t]*(?:assistant|agent|support agent|support|ai|bot)[ \t]*:", re.I | re.M)
TOOL_CALL_MARKUP = re.compile(r"</?tool_call>|\{\s*\"name\"\s*:\s*\"[^\"]*\"\s*,\s*\"arguments\"\s*:", re.I)
ASSISTANT_VOICE = re.compile(
    r"""\bhow\s+(?:can|may|could)\s+I\s+(?:help|assist)\s+you\b
    | \bis\s+there\s+anything\s+else\s+I\s+(?:can|could|may)\s+(?:help|assist)\s+you\b
    | \b(?:happy|glad)\s+to\s+(?:help|assist)\b
    | \bthank(?:s|\s+you)\s+for\s+(?:contacting|reaching\s+out\s+to|choosing)\b
    | \b(?:could|can|may|would)\s+you\s+(?:please\s+)?(?:provide|share|give\s+me|confirm)\s+your\s+
      (?:e-?mail|full\s+name|zip(?:\s+code)?|user\s+id|order\s+(?:id|number)|address)\b
    | \bI(?:'ve|\s+have)?\s+(?:successfully\s+|now\s+)?(?:cancel+ed|canceled|processed|refunded|issued|modified|
      updated|exchanged)\s+your\b
    | \b(?:I\s+am|I'm)\s+(?:an?\s+|your\s+)?(?:AI|virtual\s+assistant|language\s+model|assistant|support\s+agent|
      customer\s+(?:service|support)\s+(?:agent|representative))\b
    | \bas\s+an\s+AI\b
    | \bI'm\s+here\s+to\s+help\b
    | \bI\s+can\s+help\s+you\s+with\b
    | \bfeel\s+free\s+to\s+(?:ask|let\s+me\s+know|reach\s+out|contact\s+us)\b
    | \bwhat\s+(?:\w+\s+){0,2}would\s+you\s+like\s+(?:assistance|help)\b
    | \bwhat\s+can\s+I\s+do\s+for\s+you\b
    | \byou\s+can\s+ask\s+(?:me\s+)?(?:questions|anything)\b
    | \b(?:let\s+me\s+know|feel\s+free\s+to\s+ask)\s+if\s+you\s+(?:have|need)\s+any\s+(?:more\s+|other\s+|further\s+)?
      (?:questions|help|assistance)\b
    | \bif\s+you\s+need\s+(?:any\s+)?(?:further\s+|more\s+|additional\s+|specific\s+)?(?:assistance|help)\b
    | \b(?:don't|do\s+not)\s+hesitate\s+to\s+(?:ask|reach\s+out|contact)\b
    | \byou'd\s+like\s+me\s+to\s+(?:assist|help)\s+you\s+with\b
    | \bwhat\s+(?:\w+\s+){0,5}is\s+your\s+(?:concern|issue|question|problem)\b""",
    re.I | re.X,
)
"""What only the agent's side of a support chat says: offers of help, asking for the customer's details,
doing things to "your" order, calling itself an assistant. No customer phrase is in it."""
STOP_LIKE = re.compile(r"#{2,}\s*stop\b|\bstop\s*#{2,}", re.I)
"""A stop token written wrong ("### STOP###"): the episode went on, with the marker shown to the policy."""

_DONE = (
    r"(?:cancel+ed|canceled|returned|refunded|exchanged|updated|changed|modified|processed|done|resolved|fixed|"
    r"sorted(?:\s+out)?|taken\s+care\s+of|completed|handled)"
)
USER_CLAIMS_DONE = re.compile(
    rf"\b(?:has|is|was|were|are|got|been)\s+(?:now\s+|already\s+|successfully\s+|all\s+)*{_DONE}\b"
    r"|\ball\s+(?:set|sorted|done)\b"
    r"|\bthat(?:'s|\s+is|\s+was)\s+(?:all|everything|exactly\s+what)\s+I\s+(?:needed|wanted)\b"
    r"|\b(?:problem|issue)\s+(?:is\s+|has\s+been\s+)?(?:solved|resolved|fixed)\b"
    r"|\b(?:perfect|great|excellent|wonderful|awesome)[\s,!.]+(?:thanks|thank\s+you)\b"
    r"|\bthanks?\s+(?:you\s+)?for\s+(?:cancel+ing|canceling|processing|refunding|updating|changing|fixing|"
    r"sorting|resolving|handling|taking\s+care)",
    re.I,
)
POLICY_CLAIMS_DONE = re.compile(
    rf"\b(?:has|is|was|were|are|been)\s+(?:now\s+|already\s+|successfully\s+)*{_DONE}\b"
    rf"|\bI(?:'ve|\s+have)\s+(?:now\s+|successfully\s+)*{_DONE}\b|\bsuccessfully\b",
    re.I,
)
POLICY_REFUSES = re.compile(
    r"\b(?:cannot|can't|can not|unable\s+to|not\s+able\s+to|not\s+possible|won't\s+be\s+able)\b", re.I
)
NEGATION = re.compile(r"\b(?:not|never|no|cannot|unable)\b|n't\b", re.I)
NEGATION_WINDOW = 30
"""Characters before a claim searched for a negation ("has not been cancelled")."""

INTERNAL_ERROR = re.compile(
    r"Traceback \(most recent call last\)|\binternal (?:server )?error\b|\bHTTP 5\d\d\b"
    r"|\bservice unavailable\b|\bbad gateway\b|\bgateway time-?out\b|\btimed out\b"
    r"|\bconnection (?:refused|reset|aborted|error)\b|\bECONNREFUSED\b|-32603\b",
    re.I,
)
"""A tool that broke on its own: a stack trace, a 5xx, a time-out, a dead connection, JSON-RPC's internal error."""
INVALID_ARGUMENTS = re.compile(r"^Error: (?:unknown tool\b|[\w.-]+: arguments\b)")
"""sparring's own refusal of a call before it reaches the tool (tools/validation.py, nodes/tools.py)."""

_PLEASANTRY_WORDS = (
    "hi hello hey there dear thanks thank thx you bye goodbye ok okay yes yeah no please sure good great fine "
    "morning afternoon evening how are is it i i'm am a an the to and so well just that this all for your my "
    "me help again have nice day much very hope doing sir madam stop oh um uh hmm"
)
PLEASANTRIES = frozenset(_PLEASANTRY_WORDS.split())
"""Words that do not make a request: greetings, thanks, fillers and the function words around them."""

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_ACTOR_OF_ROLE = {"assistant": "policy", "user": "user", "tool": "env", "system": "env", "developer": "env"}
_BLAME_ORDER: tuple[Actor, ...] = ("env", "tool", "user")


class AttributionInputError(ValueError):
    """A record that cannot be attributed: the message says which field is wrong and how."""


class AttributionCheckError(RuntimeError):
    """An environment's check raised, or returned something that is not a valid `Reason`."""


@dataclass(frozen=True, slots=True)
class UserTurn:
    """One reply of the simulated user (never the opening it was handed): where it is and what it said.

    `text` is the reply as the model wrote it (stop tokens included), `words` its normalised words with
    the stop tokens removed, `shown_index` the message it was answering in `user_messages` (the policy's
    turn, or the opening), and `answered` the other side's own words in it: the assistant-role replies
    (the policy's, or the opening's greeting), without the environment's observation for the user.
    """

    index: int
    text: str
    words: tuple[str, ...]
    calls: tuple[Mapping[str, Any], ...]
    shown_index: int | None
    answered: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Episode:
    """A record, checked, with the views every check needs built once."""

    record: Mapping[str, Any]
    messages: tuple[Mapping[str, Any], ...]
    user_messages: tuple[Mapping[str, Any], ...]
    status: str | None
    stop_reason: str | None
    reward: float | None
    full_reward: float
    stop_tokens: tuple[str, ...]
    persona: str
    may_say: tuple[str, ...]
    user_turns: tuple[UserTurn, ...]
    opening_has_request: bool
    """The opening already says what the user wants (tic-tac-toe's "Let's play", a remote row's question)."""

    @property
    def succeeded(self) -> bool:
        """Scored at full reward."""
        return self.reward is not None and self.reward >= self.full_reward

    @classmethod
    def from_record(
        cls,
        record: Mapping[str, Any],
        *,
        stop_tokens: Sequence[str] = DEFAULT_STOP_TOKENS,
        rules: AttributionRules | None = None,
    ) -> Episode:
        """The episode of a rollout record (core/record.py's shape); AttributionInputError says what is wrong."""
        rules = rules or AttributionRules()
        if not isinstance(record, Mapping):
            raise AttributionInputError(f"record: expected an object, got {type(record).__name__}")
        messages = _messages(record, "messages")
        user_messages = _messages(record, "user_messages")
        reward = record.get("reward")
        if reward is not None and (isinstance(reward, bool) or not isinstance(reward, int | float)):
            raise AttributionInputError(f"reward: expected a number or null, got {reward!r}")
        for key in ("status", "stop_reason"):
            if record.get(key) is not None and not isinstance(record[key], str):
                raise AttributionInputError(f"{key}: expected a string or null, got {record[key]!r}")
        tokens = tuple(token for token in stop_tokens if token)
        opening = _opening_length(messages)
        persona = text_of(user_messages[0]) if user_messages and user_messages[0]["role"] == "system" else ""
        return cls(
            record=record,
            messages=messages,
            user_messages=user_messages,
            status=record.get("status"),
            stop_reason=record.get("stop_reason"),
            reward=None if reward is None else float(reward),
            full_reward=rules.full_reward,
            stop_tokens=tokens,
            persona=persona,
            may_say=tuple(rules.may_say),
            user_turns=_user_turns(messages, user_messages, opening, tokens),
            opening_has_request=any(
                m["role"] == "assistant" and _is_request(words(text_of(m))) for m in user_messages[1:opening]
            ),
        )

    def without_stop_tokens(self, text: str) -> str:
        """The text with the episode's stop tokens removed (they are markup, not words)."""
        for token in self.stop_tokens:
            text = text.replace(token, " ")
        return text


AttributionCheck = Callable[[Episode], Iterable[Reason]]
"""What an environment adds: a function of the episode yielding reasons (none when all is well).

It must be fast and pure (it runs at verify on every episode), read only the `Episode`, and blame
with `severity="fault"` only what it is sure of. Raising is a bug in the check: `attribute` reports it
as AttributionCheckError, naming the check.
"""


@dataclass(frozen=True, slots=True)
class AttributionRules:
    """What an environment tells attribution about one task (the hook the Environment base class calls)."""

    checks: Sequence[AttributionCheck] = ()
    """Its own checks, run after the built-in ones."""
    may_say: Sequence[str] = ()
    """Persona text the user may repeat word for word (its goal, its details); the rest of the persona is
    hidden, and reciting it is `revealed_instructions`."""
    full_reward: float = FULL_REWARD
    """The reward of a success, when the environment's scale is not 0..1."""


def attribute(
    record: Mapping[str, Any],
    *,
    stop_tokens: Sequence[str] = DEFAULT_STOP_TOKENS,
    rules: AttributionRules | None = None,
) -> Attribution:
    """The verdict on one rollout record: the built-in checks, then the environment's own (`rules.checks`).

    `stop_tokens` are the episode's `user_stop_tokens` (the record does not keep its limits).
    """
    episode = Episode.from_record(record, stop_tokens=stop_tokens, rules=rules)
    return verdict(episode, find_reasons(episode, rules))


def find_reasons(episode: Episode, rules: AttributionRules | None = None) -> list[Reason]:
    """Every reason the built-in checks and the environment's own find, uncapped and in check order."""
    reasons = [reason for check in BUILTIN_CHECKS for reason in check(episode)]
    for check in (rules or AttributionRules()).checks:
        reasons.extend(_run_extra(check, episode))
    return reasons


def verdict(episode: Episode, reasons: Sequence[Reason], judge: JudgeVerdict | None = None) -> Attribution:
    """The label the reasons decide, the reasons capped, and the judge's answer if it was asked."""
    return {"label": decide(episode, reasons), "reasons": capped(reasons), "judge": judge}


def capped(reasons: Sequence[Reason]) -> list[Reason]:
    """At most REASONS_PER_CHECK reasons per check and severity, the last kept one counting the rest."""
    kept: dict[tuple[str, str], list[Reason]] = {}
    dropped: dict[tuple[str, str], int] = {}
    out: list[Reason] = []
    for item in reasons:
        key = (item["check"], item["severity"])
        group = kept.setdefault(key, [])
        if len(group) < REASONS_PER_CHECK:
            group.append(item)
            out.append(item)
        else:
            dropped[key] = dropped.get(key, 0) + 1
    for key, count in dropped.items():
        last = kept[key][-1]
        last["detail"] += f" (and {count} more like it)"
    return out


def decide(episode: Episode, reasons: Sequence[Reason]) -> Label:
    """The label by the precedence in the module docstring."""
    if episode.status == "aborted":
        return "env"
    if episode.succeeded:
        return "none"
    blamed = {reason["actor"] for reason in reasons if reason["severity"] == "fault"}
    for actor in _BLAME_ORDER:
        if actor in blamed:
            return actor
    return "agent"


def reason(check: str, actor: Actor, detail: str, where: Where | None = None, severity: Severity = "fault") -> Reason:
    """A reason, for checks to yield."""
    return {"check": check, "actor": actor, "severity": severity, "detail": detail, "where": where}


def at(view: View, index: int) -> Where:
    """The place of a message in the record."""
    return {"view": view, "index": index}


@lru_cache(maxsize=4096)
def words(text: str) -> tuple[str, ...]:
    """Lower-case words, numbers and ids ("#W1001" -> "w1001", "$36.99" -> "36.99"): what n-grams compare.

    Cached: the checks read the same replies several times (echoes both ways, repeats)."""
    return tuple(WORD.findall(text.lower()))


def text_of(message: Mapping[str, Any]) -> str:
    """A message's text: its content string, or the text parts of a content list."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text") or "" for part in content if isinstance(part, Mapping))
    return ""


def quote(text: str) -> str:
    """A short, one-line quote of a message for a reason's detail."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= QUOTE_CHARS else flat[: QUOTE_CHARS - 3] + "...")


# ----------------------------------------------------------------------------------------------------
# Built-in checks. Each yields reasons; user checks look only at the user's own replies.


def check_aborted(episode: Episode) -> Iterator[Reason]:
    """An aborted episode was never scored: the machinery or the environment stopped it."""
    if episode.status != "aborted":
        return
    error = episode.record.get("error") or {}
    cause = f": {error.get('type')}: {error.get('message')}" if isinstance(error, Mapping) and error else ""
    yield reason("aborted", "env", f"aborted ({episode.stop_reason}){cause}"[:200])


def check_template_leak(episode: Episode) -> Iterator[Reason]:
    """Chat-template tokens or bare role headers in the user's words or tool arguments."""
    for turn in episode.user_turns:
        arguments = " ".join(str((call.get("function") or {}).get("arguments") or "") for call in turn.calls)
        for text in (turn.text, arguments):
            found = TEMPLATE_TOKEN.search(text) or ROLE_HEADER_LINE.search(text)
            if found:
                yield reason(
                    "template_leak",
                    "user",
                    f"the user's reply contains chat-template markup {found.group().strip()!r}",
                    at("user_messages", turn.index),
                )
                break


def check_spoke_as_assistant(episode: Episode) -> Iterator[Reason]:
    """The user wrote the agent's lines: its phrases, an assistant label, or a tool call as text."""
    for turn in episode.user_turns:
        found = ASSISTANT_VOICE.search(turn.text) or ASSISTANT_LABEL.search(turn.text)
        what = "spoke as the assistant"
        if found is None:
            found, what = TOOL_CALL_MARKUP.search(turn.text), "wrote a tool call as text"
        if found:
            yield reason(
                "spoke_as_assistant",
                "user",
                f"the user {what}: {quote(found.group())}",
                at("user_messages", turn.index),
            )


def check_revealed_instructions(episode: Episode) -> Iterator[Reason]:
    """A run of LEAK_NGRAM words copied from the user's persona, outside what it may say word for word
    (`AttributionRules.may_say`: its goal, its details): a recital of its hidden instructions."""
    n = LEAK_NGRAM
    hidden = _ngrams(words(episode.persona), n) - {gram for text in episode.may_say for gram in _ngrams(words(text), n)}
    if not hidden:
        return
    for turn in episode.user_turns:
        hit = next((i for i in range(len(turn.words) - n + 1) if turn.words[i : i + n] in hidden), None)
        if hit is not None:
            yield reason(
                "revealed_instructions",
                "user",
                f"the user recited its instructions: {quote(' '.join(turn.words[hit : hit + n]))}",
                at("user_messages", turn.index),
            )


def check_message_loop(episode: Episode) -> Iterator[Reason]:
    """A unit of words repeated back to back inside one reply (a model stuck in a loop)."""
    for turn in episode.user_turns:
        loop = tandem_repeat(turn.words)
        if loop is not None:
            start, unit, copies = loop
            yield reason(
                "message_loop",
                "user",
                f"the user's reply loops: {quote(' '.join(turn.words[start : start + unit]))} {copies} times in a row",
                at("user_messages", turn.index),
            )


def check_repeated_message(episode: Episode) -> Iterator[Reason]:
    """The user sent the same long reply again. A fault when it answered something different; a note
    when the policy had repeated itself too (then the user answered the same question the same way)."""
    first: dict[tuple[str, ...], UserTurn] = {}
    for turn in episode.user_turns:
        if len(turn.words) < DUPLICATE_MIN_WORDS:
            continue
        earlier = first.setdefault(turn.words, turn)
        if earlier is turn:
            continue
        provoked = [words(text) for text in earlier.answered] == [words(text) for text in turn.answered]
        yield reason(
            "repeated_message",
            "user",
            f"the user repeated its reply at user_messages[{earlier.index}]: {quote(turn.text)}"
            + (" (the policy had repeated itself too)" if provoked else ""),
            at("user_messages", turn.index),
            "note" if provoked else "fault",
        )


def check_echoed_policy(episode: Episode) -> Iterator[Reason]:
    """A user reply that is mostly a copy of the policy reply it answered, or word for word one of the
    policy's earlier replies (the two models echoing each other, a turn apart).

    Only the policy's words count: copying the environment's observation is what some users are told to
    do (calendar shows the user its next request to write).
    """
    earlier: dict[tuple[str, ...], int | None] = {}  # each policy reply's words -> where the user saw it
    for turn in episode.user_turns:
        for text in turn.answered:
            earlier.setdefault(words(text), turn.shown_index)
        if turn.answered and is_echo(turn.words, turn.answered):
            source = turn.shown_index
        elif len(turn.words) >= ECHO_MIN_WORDS and turn.words in earlier:
            source = earlier[turn.words]
        else:
            continue
        yield reason(
            "echoed_policy",
            "user",
            f"the user echoed the policy's words shown at user_messages[{source}]: {quote(turn.text)}",
            at("user_messages", turn.index),
        )


def check_no_request(episode: Episode) -> Iterator[Reason]:
    """The episode ended before the user said what it wanted (and the opening did not say it either)."""
    if not episode.user_turns or episode.opening_has_request:
        return  # a user that never got a turn had no chance to ask
    if any(_is_request(turn.words) for turn in episode.user_turns):
        return
    last = episode.user_turns[-1]
    yield reason(
        "no_request",
        "user",
        f"the episode ended ({episode.stop_reason}) before the user stated its request; it said {quote(last.text)}",
        at("user_messages", last.index),
    )


def check_user_silent(episode: Episode) -> Iterator[Reason]:
    """The user's reply had no words for the policy (empty, or only a stop token before the policy spoke)."""
    if episode.stop_reason == "user_empty":
        last = episode.user_turns[-1] if episode.user_turns else None
        yield reason(
            "user_silent",
            "user",
            f"the user's reply had no words for the policy: {quote(last.text) if last else 'nothing'}",
            at("user_messages", last.index) if last else None,
        )


def check_malformed_stop(episode: Episode) -> Iterator[Reason]:
    """A misspelt stop token reached the policy ("### STOP###"): the user meant to end and could not."""
    if not episode.user_turns:
        return  # user messages without a simulated user (a gateway record's) are the harness's
    for index, message in enumerate(episode.messages):
        if _actor(message) == "user" and (found := STOP_LIKE.search(text_of(message))):
            yield reason(
                "malformed_stop",
                "user",
                f"the user wrote a malformed stop token {found.group()!r}; the episode went on",
                at("messages", index),
            )


def check_false_success_claim(episode: Episode) -> Iterator[Reason]:
    """The user stopped with the goal unmet while saying it was met.

    If the policy's last words claimed the success, the user only believed it: that is the policy's
    failure. If they said it cannot be done, the persona lets the user end there: no reason.
    """
    if episode.stop_reason != "user_stop" or episode.reward is None or episode.succeeded or not episode.user_turns:
        return
    turn = episode.user_turns[-1]
    claim = affirmed(USER_CLAIMS_DONE, episode.without_stop_tokens(turn.text))
    if claim is None:
        return
    policy_index, policy_text = _last_policy_words(episode.messages)
    if policy_index is not None and POLICY_REFUSES.search(policy_text):
        return
    policy_claim = affirmed(POLICY_CLAIMS_DONE, policy_text) if policy_index is not None else None
    if policy_index is not None and policy_claim is not None:
        yield reason(
            "false_success_claim",
            "agent",
            f"the policy claimed a success it did not reach ({quote(policy_claim)}); reward {episode.reward}",
            at("messages", policy_index),
        )
        return
    yield reason(
        "false_success_claim",
        "user",
        f"the user stopped claiming its goal was met ({quote(claim)}) with reward {episode.reward}, "
        "though the policy never said so",
        at("user_messages", turn.index),
    )


def check_tool_failures(episode: Episode) -> Iterator[Reason]:
    """Tool errors split by cause: the tool's own failures, and calls refused because of the caller.

    A tool's own failure is a fault unless a later call of the same tool succeeded (then a note).
    Refused calls (invalid arguments, illegal moves, unknown orders) are the caller's doing: one note
    per caller (the policy's in `messages`, the user's in `user_messages`), counted.
    """
    callers: tuple[tuple[View, Actor], ...] = (("messages", "agent"), ("user_messages", "user"))
    for view, caller in callers:
        history = episode.messages if view == "messages" else episode.user_messages
        succeeded_later: set[str] = set()
        internal: list[tuple[int, str, bool]] = []
        refused: list[int] = []
        invalid = 0
        for index in range(len(history) - 1, -1, -1):
            message = history[index]
            if message["role"] != "tool":
                continue
            name = str(message.get("name") or "")
            kind = tool_error_kind(message)
            if kind is None:
                succeeded_later.add(name)
            elif kind == "internal":
                internal.append((index, name, name in succeeded_later))
            else:
                refused.append(index)
                invalid += kind == "invalid_arguments"
        for index, name, recovered in reversed(internal):
            yield reason(
                "tool_failure",
                "tool",
                f"tool {name or '?'} failed on its own: {quote(text_of(history[index]))}"
                + (" (a later call succeeded)" if recovered else ""),
                at(view, index),
                "note" if recovered else "fault",
            )
        if refused:
            who = "policy" if caller == "agent" else "user"
            yield reason(
                f"{who}_tool_errors",
                caller,
                f"{len(refused)} tool call(s) of the {who} refused: {invalid} with invalid arguments, "
                f"{len(refused) - invalid} by the environment",
                at(view, refused[-1]),
                "note",
            )


def check_policy_echoed_user(episode: Episode) -> Iterator[Reason]:
    """The policy's reply is mostly a copy of the user's last message, or word for word an earlier one:
    the policy's half of an echo loop."""
    last_user = ""
    earlier: dict[tuple[str, ...], int] = {}
    for index, message in enumerate(episode.messages):
        actor = _actor(message)
        if actor == "user":
            last_user = text_of(message)
            earlier.setdefault(words(last_user), index)
            continue
        if actor != "policy" or not last_user:
            continue
        said = words(text_of(message))
        if is_echo(said, [last_user]) or (len(said) >= ECHO_MIN_WORDS and said in earlier):
            yield reason(
                "policy_echoed_user",
                "agent",
                f"the policy echoed the user's words: {quote(text_of(message))}",
                at("messages", index),
            )


BUILTIN_CHECKS: tuple[AttributionCheck, ...] = (
    check_aborted,
    check_template_leak,
    check_spoke_as_assistant,
    check_revealed_instructions,
    check_message_loop,
    check_repeated_message,
    check_echoed_policy,
    check_no_request,
    check_user_silent,
    check_malformed_stop,
    check_false_success_claim,
    check_tool_failures,
    check_policy_echoed_user,
)


# ----------------------------------------------------------------------------------------------------
# Helpers the checks share (and environment checks may use).


def tandem_repeat(tokens: Sequence[str]) -> tuple[int, int, int] | None:
    """The first unit of 1..LOOP_MAX_UNIT words repeated LOOP_MIN_COPIES+ times back to back over
    LOOP_MIN_WORDS+ words, as (start, unit length, copies), or None. O(len * LOOP_MAX_UNIT)."""
    n = len(tokens)
    if n < LOOP_MIN_WORDS or max(Counter(tokens).values()) < LOOP_MIN_COPIES:
        return None  # every loop says some word LOOP_MIN_COPIES times
    for unit in range(1, min(LOOP_MAX_UNIT, n // LOOP_MIN_COPIES) + 1):
        need = max(LOOP_MIN_COPIES * unit, LOOP_MIN_WORDS) - unit  # positions i with tokens[i] == tokens[i + unit]
        run = 0
        for i, (a, b) in enumerate(zip(tokens, tokens[unit:], strict=False)):
            if a == b:
                run += 1
                continue
            if run >= need:
                return i - run, unit, (run + unit) // unit
            run = 0
        if run >= need:
            return n - unit - run, unit, (run + unit) // unit
    return None


def is_echo(reply: Sequence[str], sources: Sequence[str]) -> bool:
    """Whether `reply` (words) is mostly a copy of one of `sources`, or of all of them together:
    ECHO_CONTAINED of the reply's n-grams are the source's, and they cover ECHO_COVERED of the source."""
    if len(reply) < ECHO_MIN_WORDS:
        return False
    mine = _ngrams(reply, ECHO_SHINGLE)
    for source in [*sources, "\n".join(sources)] if len(sources) > 1 else sources:
        theirs = _ngrams(words(source), ECHO_SHINGLE)
        if not theirs:
            continue
        shared = len(mine & theirs)
        if shared >= ECHO_CONTAINED * len(mine) and shared >= ECHO_COVERED * len(theirs):
            return True
    return False


def affirmed(pattern: re.Pattern[str], text: str) -> str | None:
    """The first match of `pattern` stated as a fact: not negated just before it, not in a question."""
    for match in pattern.finditer(text):
        before = text[max(0, match.start() - NEGATION_WINDOW) : match.start()]
        sentence_start = max(before.rfind(mark) for mark in ".!?\n")
        if NEGATION.search(before[sentence_start + 1 :]):
            continue
        end = re.search(r"[.!?\n]", text[match.end() :])
        if end is not None and end.group() == "?":
            continue
        return match.group()
    return None


def tool_error_kind(message: Mapping[str, Any]) -> Literal["internal", "invalid_arguments", "refused"] | None:
    """How a tool message failed, or None if it did not.

    The record's own `status` and `fault` fields win (sparring writes both: `status` on every tool message,
    `fault` "tool" or "caller" on errors). Records without them (a gateway's, an older file's): a message
    failed when it says so (`status: error`, an "Error..." text, a traceback, a JSON `error` or `isError`),
    and its content says how: an internal failure (INTERNAL_ERROR), sparring's refusal of the arguments
    ("Error: name: arguments ..."), or else the environment refusing the caller (an illegal move, an
    unknown order).
    """
    content = text_of(message)
    fault = message.get("fault")
    stripped = content.lstrip()
    if message.get("status") == "success":
        return None  # the record says so (nodes/tools.py); a result's words ("Error" in a title) do not fail it
    failed = (
        message.get("status") == "error"
        or fault in ("tool", "caller")
        or stripped.startswith(("Error", "Traceback"))
        or _json_error(stripped)
    )
    if not failed:
        return None
    if fault == "tool" or (fault != "caller" and INTERNAL_ERROR.search(content)):
        return "internal"
    return "invalid_arguments" if INVALID_ARGUMENTS.match(stripped) else "refused"


# ----------------------------------------------------------------------------------------------------
# Internals.


def _messages(record: Mapping[str, Any], key: str) -> tuple[Mapping[str, Any], ...]:
    value = record.get(key)
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise AttributionInputError(f"{key}: expected a list of messages, got {type(value).__name__}")
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise AttributionInputError(f"{key}[{i}]: expected a message object, got {type(message).__name__}")
        if message.get("role") not in ROLES:
            raise AttributionInputError(
                f"{key}[{i}].role: expected one of {', '.join(sorted(ROLES))}, got {message.get('role')!r}"
            )
    return tuple(value)


def _actor(message: Mapping[str, Any]) -> str:
    return message.get("actor") or _ACTOR_OF_ROLE[message["role"]]


def _opening_length(messages: Sequence[Mapping[str, Any]]) -> int:
    """How many messages open the user's view before its first reply: the persona, then the opening's
    user/assistant text flipped, consecutive same-role messages merged (nodes/seed.py's rule)."""
    length, last_role = 1, None
    for message in messages:
        if _actor(message) != "env":
            break
        role = message["role"]
        if role in ("user", "assistant") and text_of(message) and role != last_role:
            length, last_role = length + 1, role
    return length


def _user_turns(
    messages: Sequence[Mapping[str, Any]],
    user_messages: Sequence[Mapping[str, Any]],
    opening: int,
    stop_tokens: Sequence[str],
) -> tuple[UserTurn, ...]:
    """The user's replies, each with the assistant-side words it answered.

    Every assistant reply with text reaches the user exactly once, in order, inside the next message the
    user is shown (nodes/user.py joins them, then appends the observation); one pointer over them is enough.
    """
    replies = [text for m in messages if m["role"] == "assistant" and (text := text_of(m)).strip()]
    turns = []
    shown_index, answered, next_reply = None, (), 0
    for index, message in enumerate(user_messages):
        if message["role"] == "user":
            shown, taken, offset = text_of(message), [], 0
            while next_reply < len(replies) and (found := shown.find(replies[next_reply], offset)) >= 0:
                taken.append(replies[next_reply])
                offset = found + len(replies[next_reply])
                next_reply += 1
            shown_index, answered = index, tuple(taken)
        elif message["role"] == "assistant" and index >= opening:
            text = text_of(message)
            clean = text
            for token in stop_tokens:
                clean = clean.replace(token, " ")
            turns.append(
                UserTurn(
                    index=index,
                    text=text,
                    words=words(clean),
                    calls=tuple(message.get("tool_calls") or ()),
                    shown_index=shown_index,
                    answered=answered,
                )
            )
    return tuple(turns)


def _is_request(tokens: Sequence[str]) -> bool:
    return sum(token not in PLEASANTRIES for token in tokens) >= REQUEST_MIN_CONTENT_WORDS


def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _last_policy_words(messages: Sequence[Mapping[str, Any]]) -> tuple[int | None, str]:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if _actor(message) == "policy" and text_of(message).strip():
            return index, text_of(message)
    return None, ""


def _json_error(content: str) -> bool:
    if not content.startswith("{"):
        return False
    try:
        value = json.loads(content)
    except ValueError:
        return False
    return isinstance(value, dict) and (bool(value.get("error")) or value.get("isError") is True)


_REASONS = TypeAdapter(list[Reason])


def _run_extra(check: AttributionCheck, episode: Episode) -> list[Reason]:
    """An environment's check, run and its reasons validated; its failures name it."""
    name = getattr(check, "__qualname__", None) or repr(check)
    try:
        produced = list(check(episode))
    except Exception as exc:
        raise AttributionCheckError(f"attribution check {name} raised {type(exc).__name__}: {exc}") from exc
    try:
        reasons = _REASONS.validate_python(produced, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise AttributionCheckError(f"attribution check {name}: reason [{where}]: {first['msg']}") from None
    for i, found in enumerate(reasons):
        place = found["where"]
        if place is not None:
            size = len(episode.messages if place["view"] == "messages" else episode.user_messages)
            if not 0 <= place["index"] < size:
                raise AttributionCheckError(
                    f"attribution check {name}: reason [{i}].where.index {place['index']} is outside "
                    f"{place['view']} (0..{size - 1})"
                )
    return reasons
