from flipbench.cli import main

main()
