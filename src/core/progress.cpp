#include "core/progress.h"

#include <unistd.h>

#include <cstdio>

namespace sq {

std::string format_duration(double s) {
    char buf[32];
    if (s < 60) std::snprintf(buf, sizeof buf, "%.1fs", s);
    else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", (int)s / 60, (int)s % 60);
    else std::snprintf(buf, sizeof buf, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
    return buf;
}

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total > 0 ? total : 1),
      tty_(::isatty(2)), start_(std::chrono::steady_clock::now()), last_draw_(start_) {
    draw(true);
}

Progress::~Progress() {
    if (!finished_) finish();
}

double Progress::elapsed_s() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::add(int64_t n) {
    done_ += n;
    if (done_ > total_) done_ = total_;
    draw(false);
}

void Progress::finish() {
    if (finished_) return;
    done_ = total_;
    draw(true);
    if (tty_) std::fputc('\n', stderr);
    finished_ = true;
}

void Progress::draw(bool force) {
    auto now = std::chrono::steady_clock::now();
    double frac = (double)done_ / (double)total_;
    double el = std::chrono::duration<double>(now - start_).count();
    if (!tty_) {
        int decile = (int)(frac * 10);
        if (!force && decile == last_decile_) return;
        if (decile == last_decile_ && done_ != total_) return;
        last_decile_ = decile;
    } else if (!force && std::chrono::duration<double>(now - last_draw_).count() < 0.1) {
        return;
    }
    last_draw_ = now;
    double eta = done_ > 0 ? el / frac - el : 0.0;
    double rate = el > 0 ? (double)done_ / el : 0.0;
    const int width = 28;
    int fill = (int)(frac * width);
    std::string bar(fill, '#');
    bar.resize(width, '.');
    char buf[320];
    std::snprintf(buf, sizeof buf, "%s [%s] %3d%% %lld/%lld %s%.1f %s/s elapsed %s eta %s%s%s", label_.c_str(),
                  bar.c_str(), (int)(frac * 100), (long long)done_, (long long)total_, "", rate,
                  unit_.empty() ? "it" : unit_.c_str(), format_duration(el).c_str(),
                  format_duration(eta).c_str(), suffix_.empty() ? "" : " ", suffix_.c_str());
    if (tty_) std::fprintf(stderr, "\r%s\033[K", buf);
    else std::fprintf(stderr, "%s\n", buf);
    std::fflush(stderr);
}

}  // namespace sq
