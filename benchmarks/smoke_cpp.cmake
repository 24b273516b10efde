# CPU smoke test of bench_step (ctest bench_step_smoke): both training phases and the frozen forward on a tiny
# encoder of MiniLM's structure, 3 timed steps each; each must write JSON with the fields report.py reads.
#   cmake -DBENCH=<bench_step> -DOUT=<folder> -P smoke_cpp.cmake
foreach(phase scoring after_budget frozen_forward)
  set(out "${OUT}/${phase}.json")
  file(REMOVE "${out}")
  execute_process(COMMAND "${BENCH}" --model minilm --tiny --device cpu --batch 2 --seq 16 --warmup 1 --steps 3 --threads 1
                          --phase ${phase} --out "${out}"
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "bench_step --phase ${phase} failed (${rc})")
  endif()
  file(READ "${out}" text)
  # string(JSON) parses (and so validates) the file; it needs CMake 3.19, the project asks for 3.18.
  if(CMAKE_VERSION VERSION_GREATER_EQUAL 3.19)
    foreach(key median_ms p10_ms p90_ms peak_allocated_bytes peer model dtype)
      string(JSON value ERROR_VARIABLE err GET "${text}" ${key})
      if(err)
        message(FATAL_ERROR "${out}: ${err}")
      endif()
    endforeach()
    string(JSON steps GET "${text}" steps)
    if(NOT steps EQUAL 3)
      message(FATAL_ERROR "${out}: steps is ${steps}, expected 3")
    endif()
  elseif(NOT text MATCHES "\"median_ms\"")
    message(FATAL_ERROR "${out} has no median_ms")
  endif()
endforeach()
message("bench_step smoke: ok")
