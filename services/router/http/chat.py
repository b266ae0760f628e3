"""Chat messages -> prompt token ids, with the base model's own chat template.

The router holds no model, so the gateway loads only the base model's *tokenizer* (``--tokenizer PATH``: the base
model directory, or any directory with its tokenizer files; transformers without torch, a few MB) and renders the
messages with ``apply_chat_template`` (the exact code and Jinja environment a transformers user gets). The result is
sent to the worker as ``prompt_ids``: the template already placed every special token (BOS included), and sending
text instead would let the worker's tokenizer add a second BOS.

A tokenizer without a chat template (the demo's character tokenizer, many base models) gets ``PLAIN_TEMPLATE``:
one ``role: content`` line per message and ``assistant:`` to answer after, which is what such a model has seen.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.router.http.errors import BadParam

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("adapterfleet.router.http")

PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class ChatTemplate:
    """Renders chat messages for one base model. ``load`` reads the tokenizer; the constructor takes one."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, source: str = ""):
        self.tokenizer = tokenizer
        self.source = source
        self.template = tokenizer.chat_template or PLAIN_TEMPLATE
        self.plain = not tokenizer.chat_template

    @classmethod
    def load(cls, path: str) -> ChatTemplate:
        """The tokenizer in ``path`` (no model weights; no torch). Slow (an import and file reads): call it off the
        event loop."""
        from transformers import AutoTokenizer  # noqa: PLC0415 - heavy, and only with --tokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        out = cls(tokenizer, path)
        if out.plain:
            log.warning("the tokenizer in %s has no chat template; chat uses the plain 'role: content' one", path)
        return out

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered for the assistant to answer next."""
        try:
            out = self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=True,
                                                     add_generation_prompt=True, return_dict=False)
        except Exception as err:  # noqa: BLE001 - the template's own checks (e.g. "roles must alternate") raise
            raise BadParam(f"the base model's chat template refused these messages: {err}", "messages") from None
        ids = out["input_ids"] if isinstance(out, dict) else out  # older transformers returned a list directly
        return [int(i) for i in cast("list[int]", ids)]


class NoChatTemplate:
    """What chat completions get without a tokenizer: a 400 that says why and what to do."""

    def __init__(self, why: str = "the router was started without --tokenizer"):
        self.why = why

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        raise BadParam(f"chat completions need the base model's tokenizer for its chat template, and {self.why}: "
                       "start the router with --tokenizer PATH (the base model directory), or use /v1/completions "
                       "with a prompt", "messages", "chat_template_missing")


def load_chat_template(path: str | None) -> ChatTemplate | NoChatTemplate:
    """The chat template of the tokenizer in ``path``. A directory without a loadable tokenizer (a base model saved
    without one) serves everything but chat; a path that is not a directory is a mistake, and says so."""
    if path is None:
        return NoChatTemplate()
    if not Path(path).is_dir():
        raise InvalidArgument(f"--tokenizer {path}: no such directory; give the base model's directory")
    try:
        return ChatTemplate.load(path)
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds for "no tokenizer here"
        log.warning("no tokenizer in %s (%s): /v1/chat/completions is off", path, err)
        return NoChatTemplate(f"the router's --tokenizer {path} has none ({type(err).__name__})")
