"""The chat templates a recipe may name (``chat_template: llama3``), as mergekit names
them: alpaca, chatml, exaone, llama3, mistral.

ladle's own Jinja source, written so that each renders every conversation exactly as
mergekit's template of that name does under transformers' chat-template environment
(``trim_blocks`` and ``lstrip_blocks``), whitespace included: the same prompts for the
merged model. Each is whitespace-controlled, so it renders the same with or without
those options. The template text itself is not mergekit's (docs/methods.md).
"""

from __future__ import annotations

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

LLAMA3 = ("{% for message in messages %}{{ (bos_token if loop.first else '') + "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
          "message['content'] | trim + '<|eot_id|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

# Turns after an optional leading system message alternate user/assistant; the system
# text opens the first user turn; no generation prompt (the [/INST] ends a user turn).
MISTRAL = ("{%- if messages[0]['role'] == 'system' -%}"
           "{%- set system = messages[0]['content'] + '\\n\\n' -%}"
           "{%- set turns = messages[1:] -%}"
           "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}"
           "{{- bos_token -}}"
           "{%- for message in turns -%}"
           "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
           "{{- raise_exception('mistral chat template: after an optional system message, "
           "turns must alternate user, assistant, user, ...') -}}"
           "{%- elif message['role'] == 'user' -%}"
           "{{- ' [INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' -}}"
           "{%- elif message['role'] == 'assistant' -%}"
           "{{- ' ' + message['content'] + eos_token -}}"
           "{%- else -%}"
           "{{- raise_exception('mistral chat template: only user and assistant turns "
           "(and one leading system message)') -}}"
           "{%- endif -%}{%- endfor -%}")

# The last system message (trimmed) heads the prompt; then the turns, each but the
# conversation's last message followed by a blank line; system turns print nothing.
ALPACA = ("{%- set system = messages | selectattr('role', 'equalto', 'system') | list -%}"
          "{{- ((system | last).content | trim if system else '') + '\\n\\n' -}}"
          "{%- set headers = {'user': '### Instruction:\\n', 'assistant': '### Response:\\n',"
          " 'user_context': '### Input:\\n'} -%}"
          "{%- for message in messages if message['role'] in headers -%}"
          "{{- headers[message['role']] + message['content'] | trim -}}"
          "{%- if message is not sameas messages[-1] -%}{{- '\\n\\n' -}}{%- endif -%}"
          "{%- endfor -%}"
          "{%- if add_generation_prompt and messages[-1]['role'] != 'assistant' -%}"
          "{{- '### Response:\\n' -}}{%- endif -%}")

# Indentation as mergekit's template emits it under lstrip_blocks.
EXAONE = ("{%- for message in messages -%}"
          "{%- if loop.first and message['role'] != 'system' -%}"
          "{{- '        [|system|][|endofturn|]\\n\\n' -}}{%- endif -%}"
          "{{- '    [|' + message['role'] + '|]' + message['content'] + '\\n' -}}"
          "{{- '        \\n\\n' if message['role'] == 'user' else "
          "'        [|endofturn|]\\n\\n' -}}"
          "{%- endfor -%}"
          "{%- if add_generation_prompt -%}{{- '    [|assistant|]\\n' -}}{%- endif -%}")

BUILTIN_TEMPLATES = {"alpaca": ALPACA, "chatml": CHATML, "exaone": EXAONE, "llama3": LLAMA3,
                     "mistral": MISTRAL}
