"""Token ids to text as they are produced, never emitting half a UTF-8 character.

A multi-byte character is often split over two byte-level tokens; decoding each token alone would print U+FFFD
and then garbage. The bytes of every token go through an incremental UTF-8 decoder instead, which holds back an
incomplete tail until the next token completes it. Special tokens (chat markers, end) are not text and give "".
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, tokenizer):
        self._enc = tokenizer.tiktoken_encoding
        self._special = set(tokenizer.special_ids.values())
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """The text that `token` completes (maybe "", when it ends inside a character)."""
        if token in self._special:
            return ""
        try:
            data = self._enc.decode_single_token_bytes(token)
        except KeyError:  # an id past the tokenizer's vocabulary (a padded model head): no text
            return ""
        return self._decoder.decode(data)

    def flush(self) -> str:
        """Whatever is held back at the end: a cut character becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)
