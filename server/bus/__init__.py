"""The bus between processes and nodes sharing one database (README, "Deployment")."""
