// specquant inspect -m MODEL [--out DIR] [--json FILE]: spectra and outliers
// per layer (src/quant/inspect.h). Prints a table; --out writes SVG plots a
// person would rather look at: spectrum.svg (mean normalized power spectrum
// of the weight rows, before/after smoothing) and energy.svg (energy in the
// lowest 20% of bins per layer, against the paper's 92.3%).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <iomanip>
#include <algorithm>
#include <cmath>

#include "cli/common.h"
#include "core/error.h"
#include "core/threads.h"
#include "eval/report.h"
#include "quant/inspect.h"

namespace sq {

namespace {

using json = nlohmann::json;

// A minimal line chart: series of (x, y) polylines with a legend.
std::string svg_chart(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                      const std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>>& series,
                      double ymin, double ymax, bool log_y) {
    const double W = 760, Hh = 420, L = 70, R = 190, T = 40, B = 50;
    double xmin = 1e300, xmax = -1e300;
    for (auto& s : series)
        for (auto& p : s.second) xmin = std::min(xmin, p.first), xmax = std::max(xmax, p.first);
    if (xmax <= xmin) xmax = xmin + 1;
    auto tx = [&](double x) { return L + (x - xmin) / (xmax - xmin) * (W - L - R); };
    auto ty = [&](double y) {
        double v = log_y ? std::log10(std::max(y, 1e-12)) : y;
        double a = log_y ? std::log10(ymin) : ymin, b = log_y ? std::log10(ymax) : ymax;
        v = std::clamp(v, a, b);
        return T + (1 - (v - a) / (b - a)) * (Hh - T - B);
    };
    const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
    std::ostringstream o;
    o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << Hh
      << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
    o << "<text x='" << W / 2 << "' y='22' text-anchor='middle' font-size='15'>" << title << "</text>\n";
    o << "<line x1='" << L << "' y1='" << Hh - B << "' x2='" << W - R << "' y2='" << Hh - B << "' stroke='black'/>\n";
    o << "<line x1='" << L << "' y1='" << T << "' x2='" << L << "' y2='" << Hh - B << "' stroke='black'/>\n";
    for (int i = 0; i <= 4; ++i) {
        const double fx = xmin + (xmax - xmin) * i / 4;
        o << "<text x='" << tx(fx) << "' y='" << Hh - B + 16 << "' text-anchor='middle'>" << std::setprecision(3)
          << fx << "</text>\n";
        const double fy = log_y ? std::pow(10.0, std::log10(ymin) + (std::log10(ymax) - std::log10(ymin)) * i / 4)
                                : ymin + (ymax - ymin) * i / 4;
        o << "<text x='" << L - 6 << "' y='" << ty(fy) + 4 << "' text-anchor='end'>" << std::setprecision(3) << fy
          << "</text>\n<line x1='" << L << "' y1='" << ty(fy) << "' x2='" << W - R << "' y2='" << ty(fy)
          << "' stroke='#ddd'/>\n";
    }
    o << "<text x='" << (L + W - R) / 2 << "' y='" << Hh - 12 << "' text-anchor='middle'>" << xlabel << "</text>\n";
    o << "<text x='16' y='" << (T + Hh - B) / 2 << "' transform='rotate(-90 16 " << (T + Hh - B) / 2
      << ")' text-anchor='middle'>" << ylabel << "</text>\n";
    for (size_t k = 0; k < series.size(); ++k) {
        const char* col = colors[k % 8];
        o << "<polyline fill='none' stroke='" << col << "' stroke-width='2' points='";
        for (auto& p : series[k].second) o << tx(p.first) << "," << ty(p.second) << " ";
        o << "'/>\n<text x='" << W - R + 10 << "' y='" << T + 16 * k + 10 << "' fill='" << col << "'>"
          << series[k].first << "</text>\n";
    }
    o << "</svg>\n";
    return o.str();
}

CommandAction inspect_setup(CLI::App& app) {
    struct Opts {
        std::string model, out_dir, json_out, calib;
        int threads = 0;
        InspectOptions io;
    };
    auto o = std::make_shared<Opts>();
    app.add_option("-m,--model", o->model, "GGUF file or Hugging Face directory")->required();
    app.add_option("--out", o->out_dir, "directory for spectrum.svg, energy.svg and inspect.json");
    app.add_option("--json", o->json_out, "write all statistics as JSON");
    app.add_option("--calib", o->calib, "calibration text (default: <data-dir>/calib/wiki.utf8)");
    app.add_option("--calib-n", o->io.calib_n, "calibration windows")->capture_default_str();
    app.add_option("--calib-len", o->io.calib_len, "tokens per window")->capture_default_str();
    app.add_option("--alpha", o->io.alpha, "smoothing strength for the after-smoothing numbers")->capture_default_str();
    app.add_option("--k-bar", o->io.k_bar, "bins kept per row for max|R|")->capture_default_str();
    app.add_option("-t,--threads", o->threads, "threads (0 = all)")->capture_default_str();
    return [o]() {
        threads_set(o->threads);
        o->io.calib_path = o->calib.empty() ? default_data_dir() + "/calib/wiki.utf8" : o->calib;
        LoadedModel m = model_open(o->model);
        SQ_CHECK(!m.packed, o->model, ": inspect needs the full-precision checkpoint");
        json r = inspect_model(m.model->weights(), *m.tok, o->io);
        r["model"] = o->model;
        std::printf("%-5s %-5s %8s %8s %8s %9s %8s %9s %9s %8s %9s\n", "layer", "lin", "E10%", "E20%", "E50%",
                    "E20%(Ŵ)", "max|W|", "max|Ŵ|", "max|R|", "kept(Ŵ)", "outlier");
        double e20 = 0, e20s = 0;
        int n = 0;
        for (auto& L : r["layers"]) {
            for (auto& li : L["linears"]) {
                const std::string nm = li["name"];
                const std::string key = nm == "o" ? "o_in" : nm == "down" ? "down_in"
                                        : (nm == "gate" || nm == "up") ? "gate_up_in" : "qkv_in";
                std::printf("%-5d %-5s %8.3f %8.3f %8.3f %9.3f %8.3f %9.3f %9.3f %8.3f %9.1f\n", (int)L["layer"],
                            nm.c_str(), (double)li["energy_lowest_10"], (double)li["energy_lowest_20"],
                            (double)li["energy_lowest_50"], (double)li["energy_lowest_20_smoothed"],
                            (double)li["max_abs_w"], (double)li["max_abs_w_smoothed"],
                            (double)li["max_abs_residual"], (double)li["kept_energy_uniform_kbar"],
                            (double)L["act_outlier_ratio"][key]);
                e20 += (double)li["energy_lowest_20"];
                e20s += (double)li["energy_lowest_20_smoothed"];
                ++n;
            }
        }
        std::printf("mean energy in the lowest 20%% of bins: %.3f before smoothing, %.3f after (alpha %.2f); "
                    "paper (LLaMA-2-7B): 0.923; white noise: 0.200\n",
                    e20 / n, e20s / n, o->io.alpha);
        r["mean_energy_lowest_20"] = e20 / n;
        r["mean_energy_lowest_20_smoothed"] = e20s / n;
        if (!o->json_out.empty()) write_file_atomic(o->json_out, r.dump(1));
        if (!o->out_dir.empty()) {
            std::filesystem::create_directories(o->out_dir);
            // Spectrum of a few layers' q and down rows, before and after smoothing.
            std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> spec;
            const int nl = (int)r["layers"].size();
            for (int l : {0, nl / 2, nl - 1})
                for (int which : {0, 6})
                    for (const char* key : {"spectrum", "spectrum_smoothed"}) {
                        auto& li = r["layers"][l]["linears"][which];
                        std::vector<std::pair<double, double>> pts;
                        auto sp = li[key].get<std::vector<float>>();
                        for (size_t b = 0; b < sp.size(); ++b) pts.push_back({(b + 0.5) / sp.size(), sp[b]});
                        spec.push_back({"L" + std::to_string(l) + " " + li["name"].get<std::string>() +
                                            (std::string(key) == "spectrum" ? "" : " smoothed"),
                                        pts});
                    }
            write_file_atomic(o->out_dir + "/spectrum.svg",
                              svg_chart("Mean power spectrum of weight rows (share of row energy per band)",
                                        "frequency (fraction of Nyquist)", "energy share", spec, 1e-3, 1.0, true));
            std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> en(3);
            en[0].first = "before smoothing";
            en[1].first = "after smoothing";
            en[2].first = "paper: 0.923";
            for (auto& L : r["layers"]) {
                double a = 0, b = 0;
                for (auto& li : L["linears"]) a += (double)li["energy_lowest_20"], b += (double)li["energy_lowest_20_smoothed"];
                const double x = (double)L["layer"];
                en[0].second.push_back({x, a / 7});
                en[1].second.push_back({x, b / 7});
                en[2].second.push_back({x, 0.923});
            }
            write_file_atomic(o->out_dir + "/energy.svg",
                              svg_chart("Weight energy in the lowest 20% of frequency bins", "layer",
                                        "energy fraction", en, 0.0, 1.0, false));
            write_file_atomic(o->out_dir + "/inspect.json", r.dump(1));
            std::printf("wrote %s/{spectrum.svg,energy.svg,inspect.json}\n", o->out_dir.c_str());
        }
        return 0;
    };
}

}  // namespace

SQ_COMMAND(inspect, "inspect", "Weight spectra, energy fractions and outliers per layer (table, JSON, SVG plots)",
           inspect_setup);

}  // namespace sq
