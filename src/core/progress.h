// Progress bar with ETA on stderr. Redraws at most 10x/s; silent when
// stderr is not a terminal except for a line every 10% (logs stay short).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace sq {

class Progress {
public:
    Progress(std::string label, int64_t total, std::string unit = "");
    ~Progress();
    void add(int64_t n = 1);
    void set_suffix(std::string s) { suffix_ = std::move(s); }
    void finish();
    double elapsed_s() const;

private:
    void draw(bool force);
    std::string label_, unit_, suffix_;
    int64_t total_, done_ = 0;
    int last_decile_ = -1;
    bool tty_, finished_ = false;
    std::chrono::steady_clock::time_point start_, last_draw_;
};

std::string format_duration(double seconds);  // "1m05s", "2h03m", "12.3s"

}  // namespace sq
