// specquant: one binary, one subcommand per job (see `specquant --help`).
#include <cstdio>
#include <map>

#include "cli/command.h"
#include "core/error.h"

namespace sq {
std::vector<CommandDef>& command_registry() {
    static std::vector<CommandDef> r;
    return r;
}
}  // namespace sq

int main(int argc, char** argv) {
    CLI::App app{"SpecQuant: W4A4 quantization of LLaMA-family models (smoothing + spectral truncation)"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "specquant 0.1");
    std::map<std::string, sq::CommandAction> actions;
    std::map<CLI::App*, std::string> names;
    for (auto& def : sq::command_registry()) {
        CLI::App* sub = app.add_subcommand(def.name, def.help);
        actions[def.name] = def.setup(*sub);
        names[sub] = def.name;
    }
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    try {
        for (auto* sub : app.get_subcommands()) return actions[names[sub]]();
    } catch (const sq::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    } catch (const std::bad_alloc&) {
        std::fprintf(stderr, "error: out of memory\n");
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
