// text_encoder: the TextEncoder of a real Tokenizer (its own file so the
// scoring code and its tests link without the tokenizer).
#include "eval/loglik.h"
#include "io/tokenizer.h"

namespace sq {

TextEncoder text_encoder(const Tokenizer& tok) {
    TextEncoder e;
    e.encode = [&tok](std::string_view s) { return tok.encode(s, false); };
    e.bos = tok.add_bos_default() ? tok.bos() : -1;  // SmolLM2: no BOS
    e.prefix = tok.bos() >= 0 ? tok.bos() : tok.eos();
    return e;
}

}  // namespace sq
