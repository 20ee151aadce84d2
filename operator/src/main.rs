use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dbps-operator",
    version,
    about = "Kubernetes operator for the database-per-service pattern"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

fn main() {
    match Cli::parse().command {
        Command::Crd => print!("{}", dbps_operator::api::crds_yaml()),
    }
}
