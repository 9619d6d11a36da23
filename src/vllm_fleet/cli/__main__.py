from vllm_fleet.cli import main

main()
