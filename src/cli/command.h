// Subcommand registry: each src/cli/cmd_*.cpp registers itself with
// SQ_COMMAND(name, help, setup). setup declares the options on the CLI11
// subcommand (each option once: name, default, help) and returns the action.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace sq {

using CommandAction = std::function<int()>;
using CommandSetup = std::function<CommandAction(CLI::App&)>;

struct CommandDef {
    std::string name, help;
    CommandSetup setup;
};

std::vector<CommandDef>& command_registry();

struct CommandRegistrar {
    CommandRegistrar(std::string name, std::string help, CommandSetup setup) {
        command_registry().push_back({std::move(name), std::move(help), std::move(setup)});
    }
};

}  // namespace sq

#define SQ_COMMAND(ident, name, help, setup) \
    static ::sq::CommandRegistrar sq_command_##ident(name, help, setup)
