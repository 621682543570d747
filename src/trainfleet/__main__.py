from trainfleet.cli import main

main()
