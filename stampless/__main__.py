from stampless.cli import main

main()
