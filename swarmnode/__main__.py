from swarmnode.cli.main import main

main()
