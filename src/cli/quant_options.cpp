#include "cli/quant_options.h"

#include "cli/common.h"
#include "core/error.h"

namespace sq {

void quant_cli_add(CLI::App& app, QuantCliOptions& o, bool with_method, bool with_bits) {
    if (with_method)
        app.add_option("--method", o.method, "fp | rtn | smoothquant | gptq | quarot | specquant")
            ->capture_default_str();
    if (with_bits) {
        app.add_option("--w-bits", o.w_bits, "weight bits (4)")->capture_default_str();
        app.add_option("--a-bits", o.a_bits, "activation bits (2..8, 16 = weight-only)")->capture_default_str();
        app.add_option("--kv-bits", o.kv_bits, "KV cache bits (2..8, 16 = float)")->capture_default_str();
    }
    app.add_option("--a-clip", o.a_clip, "activation clip ratio")->capture_default_str();
    app.add_option("--kv-clip", o.kv_clip, "KV cache clip ratio")->capture_default_str();
    app.add_option("--a-clip-search", o.a_clip_search,
                   "on | off (default off): activation clip ratio per layer group searched on calibration data "
                   "(grid 1.0 ... 0.7) instead of --a-clip everywhere; ignored for weight-only settings");
    app.add_option("--gptq-qinput", o.gptq_qinput,
                   "on | off (default off): GPTQ against the 4-bit activations the kernel multiplies (the 4-bit "
                   "part refit by ridge least squares, Hessian of the quantized inputs); needs GPTQ; ignored for "
                   "weight-only settings");
    app.add_option("--k-center", o.k_center,
                   "on | off (default off): store the 4-bit keys around their calibration mean (after RoPE and "
                   "the q/k rotation); softmax cancels the shift, the 4-bit range no longer holds the keys' "
                   "offset; ignored without a quantized KV cache");
    app.add_option("--k-bar", o.k_bar, "spectral budget: mean bins kept per output channel (16, 32, 64)")
        ->capture_default_str();
    app.add_option("--embed-bits", o.embed_bits, "embedding table and lm_head: 8 (Q8_0), 16 (fp16), or 4 (Q4_0 table: a tied lm_head shares it, an untied one is Q8_0)")
        ->capture_default_str();
    app.add_option("--importance", o.importance, "bin allocation score: entropy | abs_mean | abs_max | l2")
        ->capture_default_str();
    app.add_option("--temperature", o.temperature, "softmax temperature of the bin allocation")
        ->capture_default_str();
    app.add_option("--basis", o.basis, "16-bit branch basis: fourier (paper) | svd (low-rank, beyond the paper)")->capture_default_str();
    app.add_option("--weight-quantizer", o.weight_quantizer, "gptq | rtn (default: the method's)");
    app.add_option("--smooth", o.smooth, "on | off: override the method's smoothing");
    app.add_option("--spectral", o.spectral, "on | off: override the method's spectral split");
    app.add_flag("--rotate", o.rotate, "add QuaRot-style rotation (e.g. rotation + SpecQuant)");
    app.add_option("--calib", o.calib, "calibration text (default: <data-dir>/calib/wiki.utf8, data-dir as given or ../shared/data)");
    app.add_option("--calib-n", o.calib_n, "calibration windows")->capture_default_str();
    app.add_option("--calib-len", o.calib_len, "tokens per calibration window")->capture_default_str();
    app.add_option("--seed", o.seed, "calibration sampling seed")->capture_default_str();
}

static bool on_off(const std::string& v, bool dflt, const char* name) {
    if (v.empty()) return dflt;
    if (v == "on") return true;
    if (v == "off") return false;
    fail("--", name, " takes on or off, got '", v, "'");
}

QuantConfig quant_cli_config(const QuantCliOptions& o, const std::string& method, int w_bits, int a_bits,
                             int kv_bits) {
    QuantConfig qc = quant_config_for(method);
    if (method == "fp") return qc;
    qc.w_bits = w_bits;
    qc.a_bits = a_bits;
    qc.kv_bits = kv_bits;
    qc.a_clip = o.a_clip;
    qc.kv_clip = o.kv_clip;
    qc.k_bar = o.k_bar;
    qc.embed_bits = o.embed_bits;
    qc.importance = o.importance;
    qc.temperature = o.temperature;
    qc.basis = o.basis;
    if (!o.weight_quantizer.empty()) {
        SQ_CHECK(o.weight_quantizer == "gptq" || o.weight_quantizer == "rtn", "--weight-quantizer takes gptq or rtn");
        qc.gptq = o.weight_quantizer == "gptq";
    }
    qc.smooth = on_off(o.smooth, qc.smooth, "smooth");
    qc.spectral = on_off(o.spectral, qc.spectral, "spectral");
    qc.rotate = qc.rotate || o.rotate;
    qc.gptq_qinput = on_off(o.gptq_qinput, false, "gptq-qinput") && a_bits < 16;
    qc.a_clip_search = on_off(o.a_clip_search, false, "a-clip-search") && a_bits < 16;
    qc.k_center = on_off(o.k_center, false, "k-center") && kv_bits < 16;
    qc.calib_path = o.calib.empty() ? default_data_dir() + "/calib/wiki.utf8" : o.calib;
    qc.calib_n = o.calib_n;
    qc.calib_len = o.calib_len;
    qc.seed = o.seed;
    quant_config_validate(qc);
    return qc;
}

}  // namespace sq
