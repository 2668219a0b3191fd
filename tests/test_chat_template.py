"""runtime/chat_template.py renders like transformers' own chat-template renderer."""

import pytest

from commandv.runtime.chat_template import ChatTemplateError, render_chat, user_turn

TEMPLATES = [
    "{% if tools is not none %}[TOOLS]{% endif %}{{ messages[0]['content'] }}",
    "{% if documents %}[DOCS]{% endif %}{{ messages|tojson(sort_keys=True, separators=(',', ':')) }}",
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}",
]


@pytest.mark.parametrize("template", TEMPLATES)
def test_same_text_as_transformers(template):
    tu = pytest.importorskip("transformers.utils.chat_template_utils")
    msgs = [{"role": "user", "content": "Ça va? <b>&"}]
    want = tu.render_jinja_template([msgs], chat_template=template, add_generation_prompt=True,
                                    bos_token="<s>", eos_token="</s>")[0][0]
    assert render_chat(template, msgs, True, "<s>", "</s>") == want


@pytest.mark.parametrize("template,msg", [
    ("{{ raise_exception('no system role') }}", "chat template failed to render: no system role"),
    ("{{ messages|tojson(bogus=1) }}", "TypeError"),
    ("{{ messages[5]['content'] }}", "failed to render"),
    ("{{ 1 // 0 }}", "ZeroDivisionError"),
])
def test_template_failures_are_chat_template_errors(template, msg):
    with pytest.raises(ChatTemplateError, match=msg):
        render_chat(template, user_turn("hi"))
