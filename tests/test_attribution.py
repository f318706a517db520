"""Attribution: each rule check on crafted transcripts that must trigger it, and near-misses that must not.

Records are built the way the graph builds them (nodes/seed.py, nodes/user.py): the policy's view with
actors, the user's role-flipped view with its persona, the policy's replies shown to the user joined at
its next turn, stop tokens kept in the user's view and removed from the policy's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sparring.core.attribution import (
    AttributionCheckError,
    AttributionInputError,
    AttributionRules,
    Episode,
    Reason,
    at,
    attribute,
    reason,
    tandem_repeat,
)

STOP = "###STOP###"
GREETING = "Hi! This is the shop's support desk. How can I help you today?"
PERSONA = (
    "You are Mia Garcia, a customer writing to an online shop's support chat. The assistant is the shop's "
    "support agent. You are polite and brief.\n"
    "Write one or two short sentences per message, in plain words, as a customer would. Never invent order ids, "
    "items or other details you were not given. When the agent asks you to confirm a change that matches your "
    "goal, answer yes; otherwise say no and say what you want. Only when your goal is done, or the agent says it "
    f"cannot be done, thank them and end that message with {STOP}.\n"
    "To be identified you can give: email mia.garcia@example.com. Give them only when the agent asks.\n"
    "Your goal: You want to cancel your pending order #W1001 because you no longer need it.\n"
    "Your first message says what you want, in your own words."
)
DESK_OPENING = (("system", "You are the support agent of an online shop."), ("assistant", GREETING))
TICTACTOE_OPENING = (
    ("system", "You are playing tic-tac-toe as X against the user, who plays O."),
    ("user", "Let's play tic-tac-toe. You are X and you move first."),
)
TICTACTOE_PERSONA = "You are playing tic-tac-toe as O against the assistant, who plays X."
BOARD = 'The board (free cells show their number):\nX | 1 | 2\n3 | 4 | 5\n6 | 7 | 8\n{"board": ["X"]}'


class Chat:
    """Both views of one episode, grown message by message as the graph grows them."""

    def __init__(self, opening: tuple[tuple[str, str], ...] = DESK_OPENING, persona: str = PERSONA) -> None:
        self.messages: list[dict[str, Any]] = [{"role": r, "content": c, "actor": "env"} for r, c in opening]
        self.user_messages: list[dict[str, Any]] = [{"role": "system", "content": persona}]
        for role, content in opening:
            flipped = {"user": "assistant", "assistant": "user"}.get(role)
            if flipped is None:
                continue
            if self.user_messages[-1]["role"] == flipped:
                self.user_messages[-1]["content"] += f"\n\n{content}"
            else:
                self.user_messages.append({"role": flipped, "content": content})
        self.unseen: list[str] = []
        self.calls = 0

    def user(self, text: str, observation: str | None = None) -> Chat:
        """The user's reply to what it has not seen yet; its words (stop token removed) reach the policy."""
        self.show(observation)
        self.user_messages.append({"role": "assistant", "content": text})
        visible = text.replace(STOP, "").strip()
        if visible:
            self.messages.append({"role": "user", "content": visible, "actor": "user"})
        return self

    def user_move(self, position: int, result: str, observation: str | None = BOARD) -> Chat:
        """A tic-tac-toe user step: a tool call in the user's view and its result, no words."""
        self.show(observation)
        self.calls += 1
        call_id = f"user_{self.calls}"
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": "make_move", "arguments": f'{{"position": {position}}}'},
        }
        self.user_messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        self.user_messages.append({"role": "tool", "content": result, "tool_call_id": call_id, "name": "make_move"})
        return self

    def policy(self, text: str) -> Chat:
        self.messages.append({"role": "assistant", "content": text, "actor": "policy"})
        if text.strip():
            self.unseen.append(text)
        return self

    def call(self, name: str, arguments: str, result: str, **fields: Any) -> Chat:
        """A policy tool call and the tool message answering it (`fields`: e.g. status, fault)."""
        self.calls += 1
        call_id = f"policy_{self.calls}"
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        self.messages.append({"role": "assistant", "content": None, "tool_calls": [call], "actor": "policy"})
        self.messages.append(
            {"role": "tool", "content": result, "tool_call_id": call_id, "name": name, "actor": "env", **fields}
        )
        return self

    def record(
        self, status: str = "truncated", stop_reason: str = "max_turns", reward: float | None = 0.0, **extra: Any
    ) -> dict[str, Any]:
        return {
            "id": "ep",
            "env": "test",
            "status": status,
            "stop_reason": stop_reason,
            "reward": reward,
            "messages": self.messages,
            "user_messages": self.user_messages,
            "error": None,
            **extra,
        }

    def show(self, observation: str | None) -> None:
        """What the user is shown next: the policy's unseen replies, then the observation (nodes/user.py)."""
        parts = [*self.unseen, *([observation] if observation else [])]
        self.unseen = []
        if parts:
            self.user_messages.append({"role": "user", "content": "\n\n".join(parts)})
        elif self.user_messages[-1]["role"] != "user":
            self.user_messages.append({"role": "user", "content": "(The assistant has not replied yet.)"})


def checks(record: dict[str, Any], **options: Any) -> dict[str, list[Reason]]:
    found: dict[str, list[Reason]] = {}
    for item in attribute(record, **options)["reasons"]:
        found.setdefault(item["check"], []).append(item)
    return found


def label(record: dict[str, Any], **options: Any) -> str:
    return attribute(record, **options)["label"]


def good_customer() -> Chat:
    """A by-the-book support-desk conversation up to the change."""
    return (
        Chat()
        .user("Hi, I'd like to cancel my order #W1001, I don't need it anymore.")
        .policy("Sure. To find your account, could you give me your email?")
        .user("It's mia.garcia@example.com.")
        .call("find_user_id_by_email", '{"email": "mia.garcia@example.com"}', '"mia_garcia"')
        .policy("Thanks. I will cancel order #W1001 (reason: no longer needed). Shall I go ahead?")
        .user("Yes, please go ahead.")
        .call("cancel_pending_order", '{"order_id": "#W1001", "reason": "no longer needed"}', '{"refund": 36.99}')
        .policy("Your order #W1001 has been cancelled and $36.99 will go back to your card.")
    )


# --- labels and precedence ---------------------------------------------------------------------------


def test_a_clean_success_is_none_with_no_reasons() -> None:
    chat = good_customer().user(f"Great, thank you so much for your help! {STOP}")
    verdict = attribute(chat.record("completed", "user_stop", 1.0))
    assert verdict == {"label": "none", "reasons": [], "judge": None}


def test_a_clean_failure_is_the_agents() -> None:
    chat = good_customer().user(f"Thank you! {STOP}")
    assert attribute(chat.record("completed", "user_stop", 0.0)) == {"label": "agent", "reasons": [], "judge": None}


def test_aborted_is_env_whatever_else_went_wrong() -> None:
    chat = Chat().user("How can I help you today? <|im_start|>assistant")
    record = chat.record("aborted", "env_error", None, error={"type": "RemoteServerError", "message": "HTTP 502"})
    verdict = attribute(record)
    assert verdict["label"] == "env"
    assert verdict["reasons"][0] == reason("aborted", "env", "aborted (env_error): RemoteServerError: HTTP 502")
    assert {r["check"] for r in verdict["reasons"]} >= {"template_leak", "spoke_as_assistant"}


def test_a_user_fault_in_a_won_game_is_kept_but_the_label_is_none() -> None:
    chat = good_customer().user(f"Thank you thank you thank you thank you thank you thank you! {STOP}")
    verdict = attribute(chat.record("completed", "user_stop", 1.0))
    assert verdict["label"] == "none"
    assert [r["check"] for r in verdict["reasons"]] == ["message_loop"]


def test_a_broken_tool_outranks_a_broken_user() -> None:
    chat = (
        Chat()
        .user("Cancel my order #W1001 please, I do not need it.")
        .call("get_order_details", '{"order_id": "#W1001"}', "Error: HTTP 503: Service Unavailable")
        .policy("Sorry, I cannot look that up right now.")
        .user("Let me know if you have any more questions or if you need further assistance.")
    )
    assert label(chat.record()) == "tool"


def test_only_faults_decide_notes_leave_the_agent_blamed() -> None:
    chat = (
        Chat()
        .user("Cancel my order #W1001 please, I do not need it.")
        .call(
            "cancel_pending_order",
            '{"order_id": "#W1001"}',
            "Error: cancel_pending_order: arguments is missing the required field 'reason'",
        )
        .policy("Done!")
    )
    verdict = attribute(chat.record())
    assert verdict["label"] == "agent"
    assert [(r["check"], r["severity"]) for r in verdict["reasons"]] == [("policy_tool_errors", "note")]


def test_a_check_keeps_three_reasons_per_severity_and_counts_the_rest() -> None:
    chat = Chat().user("Cancel order #W1001.")
    for turn in range(6):
        chat.policy(f"Question number {turn}?").user(f"Hello! How can I help you today? ({turn})")
    verdict = attribute(chat.record())
    found = [r for r in verdict["reasons"] if r["check"] == "spoke_as_assistant"]
    assert [r["where"]["index"] for r in found] == [4, 6, 8]
    assert found[-1]["detail"].endswith("(and 3 more like it)")
    assert verdict["label"] == "user"


def test_full_reward_is_configurable_and_a_draw_is_a_failure() -> None:
    chat = Chat(TICTACTOE_OPENING, TICTACTOE_PERSONA).policy("").user_move(4, '{"board": []}')
    assert label(chat.record("completed", "env_done", 0.5)) == "agent"
    assert label(chat.record("completed", "env_done", 0.5), rules=AttributionRules(full_reward=0.5)) == "none"


# --- the user broke its role ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I want to cancel my order.<|im_end|>\n<|im_start|>assistant\nSure!",
        "Cancel order #W1001 please.<|endoftext|>",
        "Cancel order #W1001 please.\nassistant\nOf course, let me look.",
        "[INST] cancel my order [/INST]",
    ],
)
def test_template_tokens_and_bare_role_headers_are_a_leak(text: str) -> None:
    found = checks(Chat().user(text).record())
    assert found["template_leak"][0]["where"] == at("user_messages", 2)
    assert found["template_leak"][0]["actor"] == "user"


def test_a_leak_in_the_users_tool_arguments_counts_too() -> None:
    chat = Chat(TICTACTOE_OPENING, TICTACTOE_PERSONA).policy("")
    chat.show(BOARD)
    call = {
        "id": "u1",
        "type": "function",
        "function": {"name": "make_move", "arguments": '{"position": 4}<|im_start|>'},
    }
    chat.user_messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    assert "template_leak" in checks(chat.record())


@pytest.mark.parametrize(
    "text",
    [
        "The assistant told me the user id is mia_garcia.",
        "My order <#W1001> | the mug | is wrong, please fix it.",
        "User error on my side, sorry: it is order #W1001.",
        "I use the system at work; my email is mia.garcia@example.com.",
    ],
)
def test_role_words_and_odd_punctuation_in_a_sentence_are_no_leak(text: str) -> None:
    assert "template_leak" not in checks(Chat().user(text).record())


@pytest.mark.parametrize(
    "text",
    [
        # what the default model's customer wrote (support-desk, 2026-11-30)
        "Great! What topic or issue is your concern about?",
        "That's great! Please let me know the information you'd like me to assist you with.",
        "You're welcome! Let me know if you have any more questions or if you need further assistance.",
        "Hello! I can help you with a variety of tasks, including ordering, managing orders, and more.",
        "I'm sorry, but I can't assist with that. If you need any specific assistance, feel free to ask me anything!",
        "I'm here to help you! What task would you like assistance with today?",
        "I'm sorry, but as an AI language model, I don't have access to your current",
        'You can ask questions like "What kind of backpack am I looking for?"',
        "Hello! How can I help you today?",
        "Could you please provide your email address so I can look up the order?",
        "I have cancelled your order #W1001.",
        "Is there anything else I can help you with?",
        "Assistant: Sure, I can do that.",
        "As an AI, I don't have orders.",
        '<tool_call>\n{"name": "cancel_pending_order", "arguments": {"order_id": "#W1001"}}\n</tool_call>',
    ],
)
def test_the_agents_lines_from_the_user_are_speaking_as_the_assistant(text: str) -> None:
    found = checks(Chat().user(text).record())
    assert found["spoke_as_assistant"][0]["where"] == at("user_messages", 2)


@pytest.mark.parametrize(
    "text",
    [
        "Can you help me cancel my order #W1001?",
        "Could you confirm my refund amount, please?",
        "Thank you for your help!",
        "I'd be happy if you could cancel it today.",
        "Please let me know when the refund arrives.",
        "Is there anything else I can do to speed it up?",
        "Let me know if you need any more information from me.",
        "I'm not sure what my order number is, can you look it up by my email?",
        "What is the refund amount?",
        "Yes, I agree to the cancellation. Thanks!",
        "If you need my order number, it is #W1001; feel free to call me at 555-0100.",
        "What would you like me to do next? I can send a photo of the mug.",
        "Glad that's sorted out, thanks. What happens to the refund?",
        "Can I ask questions about the refund here?",
    ],
)
def test_ordinary_customer_lines_are_not_the_assistants(text: str) -> None:
    assert "spoke_as_assistant" not in checks(Chat().user(text).record())


GOAL = "You want to cancel your pending order #W1001 because you no longer need it."


@pytest.mark.parametrize(
    "text",
    [
        "You are Mia Garcia, a customer writing to an online shop's support chat. Hello?",
        f"Your goal: {GOAL}",
        "Sure. Never invent order ids, items or other details you were not given.",
    ],
)
def test_reciting_the_persona_reveals_the_instructions(text: str) -> None:
    record = Chat().user(text).record()
    found = checks(record, rules=AttributionRules(may_say=[GOAL]))
    assert found["revealed_instructions"][0]["where"] == at("user_messages", 2)
    assert found["revealed_instructions"][0]["detail"].startswith("the user recited its instructions: ")


def test_the_goal_said_word_for_word_is_a_leak_unless_the_environment_allows_it() -> None:
    record = Chat().user(f"Hi. {GOAL}").record()
    assert "revealed_instructions" in checks(record)
    assert checks(record, rules=AttributionRules(may_say=[GOAL])) == {}


@pytest.mark.parametrize(
    "text",
    [
        "Hi, I want to cancel my pending order #W1001 because I no longer need it. My email is mia.garcia@example.com.",
        "I'm Mia Garcia, writing to the shop's support chat about my pending order #W1001.",
        "It's mia.garcia@example.com; I want to cancel the pending order, I no longer need it.",
    ],
)
def test_stating_the_goal_in_ones_own_words_reveals_nothing(text: str) -> None:
    assert checks(Chat().user(text).record()) == {}


# --- the user repeated itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I want to cancel I want to cancel I want to cancel I want to cancel my order.",
        "Thank you thank you thank you thank you thank you thank you.",
        "no " * 15,
        ("Please cancel order #W1001 because I do not need it anymore. " * 3).strip(),
    ],
)
def test_a_loop_inside_one_message(text: str) -> None:
    found = checks(Chat().user(text).record())
    assert found["message_loop"][0]["where"] == at("user_messages", 2)


def test_a_long_legit_message_is_no_loop() -> None:
    text = (
        "Hi, I placed order #W1001 last week for a blue mug, a desk lamp and a pack of pens, and I would like to "
        "cancel the whole order because I found the same items cheaper elsewhere. The order is still pending, I "
        "think, since I have not received any shipping email. If the order cannot be cancelled, could you at least "
        "remove the desk lamp? The lamp is the most expensive item and the lamp is the one I really do not need. "
        "My email is mia.garcia@example.com and the card I paid with ends in 4242. No, no, not the gift card. "
        "Thanks a lot, really, thanks."
    )
    assert checks(Chat().user(text).record()) == {}


def test_tandem_repeat_reports_where_and_how_often() -> None:
    tokens = ["so", "i", "want", *["a", "refund"] * 7, "now"]
    assert tandem_repeat(tokens) == (3, 2, 7)
    assert tandem_repeat([*"abcdefghijklmn"]) is None
    assert tandem_repeat([*"ab" * 5]) is None, "10 words: under LOOP_MIN_WORDS"
    assert tandem_repeat([*"abcdefgh" * 2]) is None, "two copies is not a loop"


def test_the_same_long_message_twice_to_different_questions() -> None:
    again = "I would like to cancel my pending order #W1001 please."
    chat = Chat().user(again).policy("Could you give me your email?").user(again)
    found = checks(chat.record())
    assert [(r["severity"], r["where"]) for r in found["repeated_message"]] == [("fault", at("user_messages", 4))]
    assert label(chat.record()) == "user"


def test_the_same_answer_to_the_same_question_is_only_a_note() -> None:
    again = "My email address is mia.garcia@example.com, as I said before."
    chat = (
        Chat()
        .user("Please cancel my order #W1001.")
        .policy("Could you give me your email?")
        .user(again)
        .policy("Could you give me your email?")
        .user(again)
    )
    found = checks(chat.record())
    assert [r["severity"] for r in found["repeated_message"]] == ["note"]
    assert label(chat.record()) == "agent"


def test_support_desk_customers_repeating_an_order_id() -> None:
    chat = (
        Chat()
        .user("I want to cancel order #W1001.")
        .policy("Which order was it?")
        .user("Order #W1001.")
        .policy("Sorry, which order number?")
        .user("Order #W1001.")
        .policy("And the order id once more?")
        .user("It is #W1001, order #W1001.")
    )
    assert checks(chat.record()) == {}


def test_tictactoe_users_stating_moves() -> None:
    chat = Chat(TICTACTOE_OPENING, TICTACTOE_PERSONA)
    for move in (4, 2, 6):
        chat.policy("").user(f"I took cell {move}.", observation=BOARD)
    chat.policy("").user("I'll place my O in the bottom right corner, cell 8.", observation=BOARD)
    assert checks(chat.record("completed", "env_done", 0.0)) == {}


# --- it echoed the policy ----------------------------------------------------------------------------


def test_a_user_that_repeats_the_policys_reply_echoes_it() -> None:
    reply = "I can help you cancel that order. Could you tell me your email address first, please?"
    chat = Chat().user("Cancel order #W1001, please.").policy(reply).user(reply.replace("please?", "please."))
    found = checks(chat.record())
    assert found["echoed_policy"][0]["where"] == at("user_messages", 4)
    assert "shown at user_messages[3]" in found["echoed_policy"][0]["detail"]


def test_a_user_that_repeats_an_earlier_policy_reply_word_for_word_echoes_it() -> None:
    """The default model's loop: the user answered with the policy's reply of a turn before, then looped."""
    sorry = "I'm sorry, but I can't assist with that. If you need any specific assistance, feel free to ask!"
    here = "I'm here to help you! What task would you like assistance with today?"
    chat = Chat().user("Please cancel my order #W1001.").policy(sorry).user("Why not?").policy(here).user(sorry)
    found = checks(chat.record())
    assert [(r["where"], r["detail"][:62]) for r in found["echoed_policy"]] == [
        (at("user_messages", 6), "the user echoed the policy's words shown at user_messages[3]: ")
    ]


def test_a_policy_that_repeats_an_earlier_user_message_echoes_it() -> None:
    request = "I want to cancel my pending order #W1001 because I no longer need it."
    chat = Chat().user(request).policy("Why?").user("I said it already.").policy(request)
    assert [r["where"] for r in checks(chat.record())["policy_echoed_user"]] == [at("messages", 5)]


def test_echoing_the_greeting_is_an_echo() -> None:
    found = checks(Chat().user(GREETING).record())
    assert set(found) >= {"echoed_policy", "spoke_as_assistant"}


def test_quoting_one_short_phrase_of_the_policy_is_no_echo() -> None:
    reply = (
        "I have cancelled order #W1001. The refund of $36.99 goes back to your card ending 4242 within "
        "5 to 7 business days. Is there anything else?"
    )
    chat = Chat().user("Cancel order #W1001, please.").policy(reply).user("Within 5 to 7 business days? OK, fine.")
    assert "echoed_policy" not in checks(chat.record())


def test_copying_the_environments_observation_is_no_echo() -> None:
    request = "Please add event 2, Team sync, for 30 minutes, at 10:00."
    chat = Chat((("system", "You are a scheduling assistant."),), "Each time, write your next request.")
    chat.user(request.replace("2", "1").replace("Team sync", "Standup"), observation="Your next request: ...")
    chat.policy("Added event 1.").user(request, observation=f"Your next request: {request}")
    assert checks(chat.record("completed", "user_stop", 1.0)) == {}


def test_a_policy_that_echoes_the_user_is_blamed_on_the_agent() -> None:
    text = "I want to cancel my pending order #W1001 because I no longer need it."
    chat = Chat().user(text).policy(text)
    found = checks(chat.record())
    assert found["policy_echoed_user"][0]["actor"] == "agent"
    assert found["policy_echoed_user"][0]["where"] == at("messages", 3)


# --- it ended before stating its request, or went silent -------------------------------------------------


def test_a_customer_who_writes_only_the_stop_token() -> None:
    chat = Chat().user(STOP)
    record = chat.record("truncated", "user_empty", 0.0)
    found = checks(record)
    assert set(found) == {"no_request", "user_silent"}
    assert label(record) == "user"


def test_pleasantries_then_a_stop_are_no_request() -> None:
    chat = Chat().user("Hi there!").policy("Hello! How can I help?").user(f"Thank you, have a nice day! {STOP}")
    assert "no_request" in checks(chat.record("completed", "user_stop", 0.0))


def test_a_short_request_is_a_request() -> None:
    chat = Chat().user("Cancel my order.").policy("Which one?").user(f"Never mind, bye. {STOP}")
    assert "no_request" not in checks(chat.record("completed", "user_stop", 0.0))


def test_a_user_whose_request_is_the_opening_needs_to_say_nothing() -> None:
    chat = Chat(TICTACTOE_OPENING, TICTACTOE_PERSONA).policy("").user_move(4, '{"board": [], "message": "O played 4."}')
    assert checks(chat.record("completed", "env_done", 0.0)) == {}


def test_a_user_that_never_got_a_turn_is_not_blamed() -> None:
    chat = Chat((*TICTACTOE_OPENING[:1], ("assistant", "Hello.")), "You are a customer.")
    assert checks(chat.record("completed", "env_done", 0.0)) == {}


def test_a_misspelt_stop_token_reaches_the_policy() -> None:
    chat = good_customer().user("Thanks, bye! ### STOP###")
    found = checks(chat.record())
    assert found["malformed_stop"][0]["where"] == at("messages", len(chat.messages) - 1)
    assert "malformed_stop" not in checks(good_customer().user(f"Thanks, bye! {STOP}").record())


# --- it stopped with the goal unmet while claiming it was met --------------------------------------------


def early_stop(policy_said: str, user_said: str) -> dict[str, Any]:
    chat = Chat().user("Please cancel my order #W1001.").policy(policy_said).user(user_said)
    return chat.record("completed", "user_stop", 0.0)


def test_a_user_that_claims_success_the_policy_never_announced() -> None:
    record = early_stop("Could you give me your email?", f"Great, thanks! My order has been cancelled. {STOP}")
    found = checks(record)
    assert found["false_success_claim"][0]["actor"] == "user"
    assert label(record) == "user"


def test_a_user_that_believed_the_policys_false_claim_leaves_the_agent_blamed() -> None:
    record = early_stop("Your order #W1001 has been cancelled.", f"Perfect, thank you! {STOP}")
    found = checks(record)
    assert [(r["actor"], r["where"]) for r in found["false_success_claim"]] == [("agent", at("messages", 3))]
    assert label(record) == "agent"


@pytest.mark.parametrize(
    ("policy_said", "user_said"),
    [
        ("I cannot cancel it: the order was already delivered.", f"I see, it is all set then, thanks. {STOP}"),
        ("Could you give me your email?", f"Has my order been cancelled? {STOP}"),
        ("Could you give me your email?", f"It has not been cancelled yet, but I have to go. {STOP}"),
        ("Could you give me your email?", f"Never mind, bye. {STOP}"),
    ],
)
def test_accepting_a_refusal_asking_or_giving_up_is_no_false_claim(policy_said: str, user_said: str) -> None:
    assert "false_success_claim" not in checks(early_stop(policy_said, user_said))


def test_thanking_politely_after_a_real_success() -> None:
    chat = good_customer().user(f"Perfect, thank you! That's all I needed, my order has been cancelled. {STOP}")
    assert attribute(chat.record("completed", "user_stop", 1.0)) == {"label": "none", "reasons": [], "judge": None}


# --- tool failures apart from the caller's bad arguments ------------------------------------------------


def test_the_policys_refused_calls_are_counted_in_one_note() -> None:
    chat = (
        Chat()
        .user("Please cancel my order #W1001.")
        .call(
            "cancel_pending_order",
            '{"order_id": "#W1001"',
            "Error: cancel_pending_order: arguments are not valid JSON (x)",
        )
        .call(
            "cancel_pending_order",
            '{"order_id": "#W1001", "reason": "no longer needed"}',
            '{"error": "authenticate the customer first"}',
        )
        .call("launch_rocket", "{}", "Error: unknown tool 'launch_rocket'; available: cancel_pending_order")
    )
    verdict = attribute(chat.record())
    assert verdict["label"] == "agent"
    assert verdict["reasons"] == [
        reason(
            "policy_tool_errors",
            "agent",
            "3 tool call(s) of the policy refused: 2 with invalid arguments, 1 by the environment",
            at("messages", 4),
            "note",
        )
    ]


@pytest.mark.parametrize(
    ("result", "fields"),
    [
        ("Error: HTTP 503: upstream connect error", {}),
        ('Traceback (most recent call last):\n  File "tool.py", line 3\nKeyError: "orders"', {}),
        ('{"error": "Internal Server Error"}', {}),
        ('{"error": {"code": -32603, "message": "boom"}}', {}),
        ("the lookup service timed out", {"status": "error"}),
        ('{"error": "order not found"}', {"fault": "tool"}),
    ],
)
def test_a_tool_that_failed_on_its_own_is_the_tools_fault(result: str, fields: dict[str, str]) -> None:
    chat = (
        Chat()
        .user("Please cancel my order #W1001.")
        .call("get_order_details", '{"order_id": "#W1001"}', result, **fields)
    )
    found = checks(chat.record())
    assert [(r["actor"], r["severity"], r["where"]) for r in found["tool_failure"]] == [
        ("tool", "fault", at("messages", 4))
    ]
    assert label(chat.record()) == "tool"


def test_the_caller_fault_field_wins_over_the_words() -> None:
    chat = Chat().user("Please cancel my order.").call("lookup", "{}", "Error: request timed out", fault="caller")
    assert [r["check"] for r in attribute(chat.record())["reasons"]] == ["policy_tool_errors"]


def test_a_tool_failure_recovered_by_a_later_call_is_a_note() -> None:
    chat = (
        Chat()
        .user("Please cancel my order #W1001.")
        .call("get_order_details", '{"order_id": "#W1001"}', "Error: HTTP 502: Bad Gateway")
        .call("get_order_details", '{"order_id": "#W1001"}', '{"status": "pending"}')
    )
    found = checks(chat.record())
    assert [(r["severity"], r["detail"].endswith("(a later call succeeded)")) for r in found["tool_failure"]] == [
        ("note", True)
    ]
    assert label(chat.record()) == "agent"


def test_the_users_illegal_moves_are_a_note_on_the_user() -> None:
    taken = '{"board": ["X"], "error": "position 0 is already taken by X"}'
    chat = Chat(TICTACTOE_OPENING, TICTACTOE_PERSONA).policy("").user_move(0, taken).user_move(0, taken, None)
    found = checks(chat.record("completed", "env_done", 0.0))
    assert list(found) == ["user_tool_errors"]
    assert (found["user_tool_errors"][0]["actor"], found["user_tool_errors"][0]["severity"]) == ("user", "note")
    assert found["user_tool_errors"][0]["where"] == at("user_messages", 4)


# --- environments' own checks --------------------------------------------------------------------------


def env_filled_in(episode: Episode) -> Iterator[Reason]:
    """A tic-tac-toe check: O's moves the environment played for a user that could not move."""
    moves = (episode.record.get("env_result") or {}).get("moves") or []
    played = [m["position"] for m in moves if m.get("by") == "env"]
    if len(played) >= 2:
        yield reason("env_moved_for_user", "user", f"the environment played O's moves {played}")


def test_an_environments_check_joins_the_verdict() -> None:
    chat = Chat(TICTACTOE_OPENING, TICTACTOE_PERSONA).policy("").user_move(4, '{"board": []}')
    moves = [{"position": 4, "mark": "O", "by": "env"}, {"position": 0, "mark": "O", "by": "env"}]
    record = chat.record("completed", "env_done", 0.0, env_result={"moves": moves})
    assert label(record) == "agent"
    verdict = attribute(record, rules=AttributionRules(checks=[env_filled_in]))
    assert verdict == {
        "label": "user",
        "reasons": [reason("env_moved_for_user", "user", "the environment played O's moves [4, 0]")],
        "judge": None,
    }


def test_an_environment_can_blame_itself() -> None:
    def unsolvable(episode: Episode) -> list[Reason]:
        return [reason("unsolvable_task", "env", "the task asks for a deleted order")]

    assert label(good_customer().record(), rules=AttributionRules(checks=[unsolvable])) == "env"


@pytest.mark.parametrize(
    ("produced", "message"),
    [
        ([{"check": "x", "actor": "policy", "severity": "fault", "detail": "d", "where": None}], "[0.actor]"),
        ([{"check": "x", "actor": "user", "severity": "fault", "detail": "d"}], "[0.where]: Field required"),
        ([{**reason("x", "user", "d"), "blame": 1}], "[0.blame]: Extra inputs are not permitted"),
        ([reason("x", "user", "d", at("messages", 99))], "[0].where.index 99 is outside messages (0.."),
        ([reason("x", "user", "d", {"view": "policy", "index": 0})], "[0.where.view]"),
    ],
)
def test_a_bad_reason_from_an_environment_names_the_check_and_the_field(produced: list[Any], message: str) -> None:
    def bad(episode: Episode) -> list[Any]:
        return produced

    with pytest.raises(AttributionCheckError, match="bad") as caught:
        attribute(good_customer().record(), rules=AttributionRules(checks=[bad]))
    assert message in str(caught.value)


def test_a_check_that_raises_is_reported_by_name() -> None:
    def broken(episode: Episode) -> list[Reason]:
        raise KeyError("moves")

    with pytest.raises(AttributionCheckError, match=r"broken raised KeyError: 'moves'"):
        attribute(good_customer().record(), rules=AttributionRules(checks=[broken]))


# --- records ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"messages": [{"content": "hi"}]}, "messages[0].role: expected one of"),
        ({"user_messages": "hi"}, "user_messages: expected a list of messages, got str"),
        ({"messages": ["hi"]}, "messages[0]: expected a message object, got str"),
        ({"reward": "1"}, "reward: expected a number or null, got '1'"),
        ({"reward": True}, "reward: expected a number or null, got True"),
        ({"status": 3}, "status: expected a string or null, got 3"),
    ],
)
def test_a_malformed_record_is_refused_with_the_field_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(AttributionInputError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        attribute({**good_customer().record(), **change})


def test_a_record_without_a_simulated_user_gets_no_user_checks() -> None:
    record = {
        "status": "completed",
        "stop_reason": "agent_done",
        "reward": 0.0,
        "messages": [
            {"role": "user", "content": "How can I help you today? <|im_start|> ### STOP###", "actor": "user"},
            {"role": "assistant", "content": "Done.", "actor": "policy"},
        ],
        "user_messages": [],
    }
    assert attribute(record) == {"label": "agent", "reasons": [], "judge": None}


def test_content_parts_are_read_as_text() -> None:
    chat = Chat().user("placeholder")
    chat.user_messages[-1]["content"] = [{"type": "text", "text": "Hello! How can I help you today?"}]
    assert "spoke_as_assistant" in checks(chat.record())


def test_the_episodes_own_stop_tokens_are_stripped() -> None:
    token = "[[conversation over]]"
    record = Chat().user(token).policy("Hello?").user(f"Bye {token}").record("completed", "user_stop", 0.0)
    assert "no_request" not in checks(record)
    assert "no_request" in checks(record, stop_tokens=[token])
