package main

const sys_add_key = 217
