//! The text side of a model: a `tokenizers` tokenizer plus what it needs around it (end-of-sequence id, chat
//! template). Built from `tokenizer.json`, from GGUF metadata, or in code for tests.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::json;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::error::{ModelError, Result};

/// How prompts are wrapped for a chat model. Only ChatML is rendered (SmolLM2, Qwen2); we do not run Jinja.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n`.
    ChatMl,
    /// No template known: `apply_chat_template` joins the message contents.
    None,
}

/// One chat message for `apply_chat_template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A tokenizer with its end-of-sequence id and chat template.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    eos_id: u32,
    chat_template: ChatTemplate,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_id", &self.eos_id)
            .field("chat_template", &self.chat_template)
            .finish()
    }
}

/// GPT-2's reversible byte → printable-char map, in byte order.
fn byte_chars() -> Vec<char> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut extra = 0u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b)
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("valid code point")
            }
        })
        .collect()
}

fn byte_level_parts(digits: bool) -> PreTokenizerWrapper {
    let bl = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    if digits {
        PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            bl,
        ]))
    } else {
        bl
    }
}

impl TextTokenizer {
    /// Wraps a built tokenizer. `eos_token` must be in its vocabulary.
    pub fn new(inner: Tokenizer, eos_token: &str, chat_template: ChatTemplate) -> Result<Self> {
        let eos_id = inner.token_to_id(eos_token).ok_or_else(|| {
            ModelError::Tokenize(format!(
                "end-of-sequence token {eos_token:?} not in vocabulary"
            ))
        })?;
        Ok(TextTokenizer {
            inner,
            eos_id,
            chat_template,
        })
    }

    /// A byte-level tokenizer needing no file, for tests: ids 0, 1, 2 are `<|endoftext|>`, `<|im_start|>` and
    /// `<|im_end|>` (the end-of-sequence token, as in SmolLM2), ids 3..259 are the 256 bytes; no merges.
    /// ChatML template. Vocabulary size 259.
    pub fn byte_level_for_tests() -> Self {
        let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
        let mut vocab: Vocab = specials
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), i as u32))
            .collect();
        for (b, c) in byte_chars().into_iter().enumerate() {
            vocab.insert(c.to_string(), 3 + b as u32);
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .expect("a vocabulary with no merges always builds");
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(byte_level_parts(false)));
        tok.with_decoder(Some(ByteLevel::default()));
        tok.add_special_tokens(specials.map(|s| AddedToken::from(s, true)))
            .expect("special tokens of the vocabulary");
        TextTokenizer::new(tok, "<|im_end|>", ChatTemplate::ChatMl)
            .expect("<|im_end|> is in the vocabulary")
    }

    /// Loads `tokenizer.json`, and the end-of-sequence token and chat template from `tokenizer_config.json`
    /// beside it when present; otherwise `eos_id` from config.json.
    pub fn from_hf_dir(dir: &Path, config_eos: Option<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let bad = |reason: String| ModelError::Tokenizer {
            path: path.clone(),
            reason,
        };
        if !path.exists() {
            return Err(bad("file not found".into()));
        }
        let inner = Tokenizer::from_file(&path).map_err(|e| bad(e.to_string()))?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc: serde_json::Value = match std::fs::read_to_string(&tc_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| ModelError::Tokenizer {
                path: tc_path.clone(),
                reason: e.to_string(),
            })?,
            Err(_) => serde_json::Value::Null,
        };
        let token_str = |v: &serde_json::Value| -> Option<String> {
            match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let eos_id = tc
            .get("eos_token")
            .and_then(token_str)
            .and_then(|s| inner.token_to_id(&s))
            .or(config_eos)
            .ok_or_else(|| {
                bad("no end-of-sequence token in tokenizer_config.json or config.json".into())
            })?;
        let template = tc
            .get("chat_template")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let chat_template = if template.contains("<|im_start|>") {
            ChatTemplate::ChatMl
        } else {
            ChatTemplate::None
        };
        Ok(TextTokenizer {
            inner,
            eos_id,
            chat_template,
        })
    }

    /// Builds the tokenizer stored in GGUF metadata. Supports the GPT-2 style byte-level BPE
    /// (`tokenizer.ggml.model = "gpt2"`), as SmolLM2, Qwen2 and Llama 3 ship it; digits are split
    /// individually for SmolLM2 (`tokenizer.ggml.pre = "smollm"`).
    pub fn from_gguf(path: &Path, md: &HashMap<String, Value>) -> Result<Self> {
        let bad = |reason: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let get_str = |k: &str| md.get(k).and_then(|v| v.to_string().ok()).cloned();
        let model = get_str("tokenizer.ggml.model").unwrap_or_default();
        if model != "gpt2" {
            return Err(bad(format!(
                "tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
            )));
        }
        let strings = |k: &str| -> Result<Vec<String>> {
            let arr = md
                .get(k)
                .ok_or_else(|| bad(format!("missing metadata {k}")))?
                .to_vec()
                .map_err(|e| bad(format!("{k}: {e}")))?;
            arr.iter()
                .map(|v| v.to_string().cloned().map_err(|e| bad(format!("{k}: {e}"))))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| bad(format!("malformed merge {m:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<i64> = match md.get("tokenizer.ggml.token_type").map(|v| v.to_vec()) {
            Some(Ok(v)) => v
                .iter()
                .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
                .collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        let pre = get_str("tokenizer.ggml.pre").unwrap_or_default();
        inner.with_pre_tokenizer(Some(byte_level_parts(pre == "smollm")));
        inner.with_decoder(Some(ByteLevel::default()));
        // Control (3) and user-defined (4) tokens are matched whole in the text and skipped when decoding.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| bad(e.to_string()))?;
        let eos_id = md
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
            .ok_or_else(|| bad("missing metadata tokenizer.ggml.eos_token_id".into()))?;
        if eos_id as usize >= tokens.len() {
            return Err(bad(format!("eos id {eos_id} outside the vocabulary")));
        }
        let template = get_str("tokenizer.chat_template").unwrap_or_default();
        let chat_template = if template.contains("<|im_start|>") {
            ChatTemplate::ChatMl
        } else {
            ChatTemplate::None
        };
        Ok(TextTokenizer {
            inner,
            eos_id,
            chat_template,
        })
    }

    /// Token ids of `text`; special tokens written in the text (e.g. `<|im_start|>`) are recognised.
    /// No BOS or other special token is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens (EOS, chat markers) left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenize(e.to_string()))
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn eos_token(&self) -> Option<String> {
        self.inner.id_to_token(self.eos_id)
    }

    /// The vocabulary entry of `id` (byte-level form for BPE vocabularies).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The same tokenizer with another end-of-sequence id (models with several stop tokens pick one).
    pub fn with_eos_id(mut self, id: u32) -> Result<Self> {
        if id as usize >= self.vocab_size() {
            return Err(ModelError::Tokenize(format!(
                "eos id {id} outside the vocabulary"
            )));
        }
        self.eos_id = id;
        Ok(self)
    }

    /// Number of ids the tokenizer can produce, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn chat_template(&self) -> ChatTemplate {
        self.chat_template
    }

    /// Renders `messages` with the chat template; with `add_generation_prompt` the text ends where the
    /// assistant's answer begins. With no template the contents are joined by newlines.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> String {
        match self.chat_template {
            ChatTemplate::ChatMl => {
                let mut s = String::new();
                for m in messages {
                    s.push_str(&format!(
                        "<|im_start|>{}\n{}<|im_end|>\n",
                        m.role, m.content
                    ));
                }
                if add_generation_prompt {
                    s.push_str("<|im_start|>assistant\n");
                }
                s
            }
            ChatTemplate::None => messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// A single user turn rendered for generation: what `generate --chat` and the server's chat projects use.
    pub fn chat_prompt(&self, user_text: &str) -> String {
        self.apply_chat_template(
            &[ChatMessage {
                role: "user".into(),
                content: user_text.into(),
            }],
            true,
        )
    }

    /// Writes `tokenizer.json` and a `tokenizer_config.json` recording the EOS token and the template kind,
    /// so `from_hf_dir` reads back the same tokenizer.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("tokenizer.json");
        self.inner
            .save(&path, false)
            .map_err(|e| ModelError::Tokenizer {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let template = match self.chat_template {
            ChatTemplate::ChatMl => json!(
                "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
            ),
            ChatTemplate::None => serde_json::Value::Null,
        };
        let tc = json!({ "eos_token": self.eos_token(), "chat_template": template });
        let tc_path = dir.join("tokenizer_config.json");
        std::fs::write(
            &tc_path,
            serde_json::to_vec_pretty(&tc).expect("json serialises"),
        )
        .map_err(|e| ModelError::io(tc_path, e))
    }
}
