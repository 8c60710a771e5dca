// specquant repack -m IN.sqm --embed-bits 4|8 -o OUT.sqm
// Rewrites a packed model with another embedding-table format, leaving every
// linear layer as it is (no calibration, seconds instead of minutes):
// --embed-bits 4 stores the table in Q4_0 (a tied lm_head shares it, an
// untied one stays / becomes Q8_0), 8 in Q8_0. The table is requantized from
// the file's dequantized table; for SmolLM2, whose GGUF table is Q8_0 and so
// stored losslessly in the default 8-bit file, that is the table
// `quantize --embed-bits 4` makes. The provenance records it
// (quant.embed_bits, quant.repacked_from).
#include <cstdio>

#include "cli/common.h"
#include "core/error.h"
#include "model/model.h"
#include "quant/packed_model.h"

namespace sq {

static CommandAction repack_setup(CLI::App& app) {
    struct Opts {
        std::string in, out;
        int embed_bits = 4;
    };
    auto o = std::make_shared<Opts>();
    app.add_option("-m,--model", o->in, "packed model (.sqm) to read")->required();
    app.add_option("-o,--output", o->out, "packed model to write")->required();
    app.add_option("--embed-bits", o->embed_bits, "embedding table: 4 (Q4_0) or 8 (Q8_0)")->capture_default_str();
    return [o]() {
        SQ_CHECK(o->embed_bits == 4 || o->embed_bits == 8, "repack: --embed-bits takes 4 or 8, got ", o->embed_bits);
        SQ_CHECK(o->in != o->out, "repack: write to another file than ", o->in);
        PackedModel pm = packed_model_load(o->in);
        ModelWeights& w = pm.weights;
        const ModelConfig& c = w.cfg;
        // Is lm_head the table itself (tied)? Then it follows the new table.
        const bool tied = (w.embed_q8 && dynamic_cast<const LinearQ8*>(w.lm_head.get()) &&
                           static_cast<const LinearQ8*>(w.lm_head.get())->matrix() == w.embed_q8) ||
                          (w.embed_q4 && dynamic_cast<const LinearQ4*>(w.lm_head.get()) &&
                           static_cast<const LinearQ4*>(w.lm_head.get())->matrix() == w.embed_q4) ||
                          (!w.embed_q8 && !w.embed_q4 && dynamic_cast<const LinearF32*>(w.lm_head.get()) &&
                           static_cast<const LinearF32*>(w.lm_head.get())->w == w.embed);
        w.embed = embed_f32(w);  // exact: 8/4-bit values are float32 values
        w.embed_q8.reset();
        w.embed_q4.reset();
        if (tied) {  // table and lm_head: the new table
            w.lm_head = std::make_unique<LinearF32>(c.d_model, c.vocab, w.embed);
            model_embed_quant(w, o->embed_bits);
        } else if (o->embed_bits == 4) {  // an untied lm_head stays as it is; only the table changes
            SQ_CHECK(q4_fits(c.d_model), "repack: d_model ", c.d_model, " is not a multiple of ", Q4_BLOCK);
            w.embed_q4 = std::make_shared<const Q4Matrix>(Q4Matrix::quantize(w.embed.data(), c.vocab, c.d_model));
        } else {
            SQ_CHECK(q8_fits(c.d_model), "repack: d_model ", c.d_model, " is not a multiple of ", Q8_BLOCK);
            w.embed_q8 = std::make_shared<const Q8Matrix>(Q8Matrix::quantize(w.embed.data(), c.vocab, c.d_model));
        }
        std::vector<float>().swap(w.embed);
        pm.quant["embed_bits"] = o->embed_bits;
        pm.quant["repacked_from"] = o->in;
        packed_model_save(o->out, w, pm.tokenizer, pm.quant);
        std::printf("wrote %s: embedding table %s, lm_head %s\n", o->out.c_str(), o->embed_bits == 4 ? "q4_0" : "q8_0",
                    tied ? "tied" : w.lm_head->kind().c_str());
        return 0;
    };
}

SQ_COMMAND(repack, "repack", "Rewrite a packed model with another embedding-table format (4- or 8-bit)", repack_setup);

}  // namespace sq
