"""Chat templates: the checkpoint's jinja2 template rendered in a sandbox.

The template comes from a downloaded checkpoint, so it is untrusted code: the immutable sandbox forbids attribute
tricks and mutation of the objects it receives. Any failure to render is the request's fault or the checkpoint's,
and is reported as a 400 naming the cause, never a 500.
"""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from unifer.server.protocol import ChatMessage, ParamError

_MAX_RENDERED_CHARS = 4_000_000  # a template that loops wildly is cut off here rather than eating memory


class ChatTemplateError(ParamError):
    pass


def _raise_exception(message: str) -> None:
    # HF templates call raise_exception("...") to reject conversations they cannot format.
    raise ChatTemplateError(f"the chat template rejected the conversation: {message}", param="messages")


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def load_chat_template(source: str) -> str:
    """A template given as a file or as the template itself (vLLM's ``--chat-template``), checked to compile."""
    path = Path(source)
    try:
        template = path.read_text(encoding="utf-8") if path.is_file() else source
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the chat template {source!r}: {e}") from e
    try:
        _compile(template)
    except jinja2.TemplateError as e:
        raise ValueError(f"the chat template {source!r} does not compile: {e}") from e
    return template


def render_chat(template: str | None, messages: list[ChatMessage], *, add_generation_prompt: bool = True,
                bos_token: str | None = None, eos_token: str | None = None) -> str:
    if not template:
        raise ChatTemplateError("this model's checkpoint has no chat template (tokenizer_config.json "
                                "'chat_template' or chat_template.jinja); use /v1/completions instead",
                                param="messages", code="no_chat_template")
    try:
        compiled = _compile(template)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the checkpoint's chat template does not compile: {e}", param="messages") from e
    plain = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in messages]
    try:
        text = compiled.render(messages=plain, add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token or "", eos_token=eos_token or "", tools=None)
    except ChatTemplateError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise ChatTemplateError(f"the chat template failed to render: {type(e).__name__}: {e}",
                                param="messages") from e
    if len(text) > _MAX_RENDERED_CHARS:
        raise ChatTemplateError("the rendered conversation is too long", param="messages")
    return text


def render_conversation(tokenizer, messages: list[ChatMessage], *, add_generation_prompt: bool = True,
                        template: str | None = None) -> str:
    """``render_chat`` with ``tokenizer``'s template (or ``template`` in its place) and special tokens; the server
    and ``LLM.chat`` both render through here. The result is encoded without adding special tokens: the template
    writes them itself (as Hugging Face's apply_chat_template assumes)."""
    return render_chat(template or (tokenizer.chat_template if tokenizer else None), messages,
                       add_generation_prompt=add_generation_prompt,
                       bos_token=tokenizer.bos_token if tokenizer else None,
                       eos_token=tokenizer.eos_token if tokenizer else None)
